"""Command lines of the stack's processes, and how they are started so that none outlives its parent.

Devices are counted in a child process so that the launcher itself never initialises CUDA.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import get_settings

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in a freshly forked child


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when the thread that started it ends (Linux prctl).

    `parent_pid`: the parent as the caller knew it; if it is already gone, exit now, since the
    kernel would never send the signal. Also called as a `preexec_fn`, between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return  # prctl is Linux's; elsewhere the supervisor's stop() is the only guard
    if _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig))) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def count_devices() -> int:
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "CUDA_MODULE_LOADING": "LAZY"})
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return 0


def device_ids(spec: str | None) -> list[str]:
    if spec:
        return [d.strip() for d in spec.split(",") if d.strip()]
    return [str(i) for i in range(count_devices())]


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args]


def gpu_workers(spec: str | None, loglevel: str = "INFO", prefetch: int = 1) -> list[Proc]:
    devices = device_ids(spec)
    extra = ["--prefetch-multiplier", str(prefetch)] if prefetch != 1 else []
    if not devices:  # no CUDA: one gpu-queue worker on the CPU keeps the pipeline whole
        return [Proc("gpu-cpu", celery("worker", "-Q", "gpu", "-c", "1", "-n", "gpu-cpu@%h", "-E",
                                       "--loglevel", loglevel, *extra),
                     {"CUDA_VISIBLE_DEVICES": "", "SPEECHQ_WORKER_ROLE": "gpu"})]
    return [Proc(f"gpu{d}", celery("worker", "-Q", "gpu", "-c", "1", "-n", f"gpu{d}@%h", "-E",
                                   "--loglevel", loglevel, *extra),
                 {"CUDA_VISIBLE_DEVICES": d, "SPEECHQ_WORKER_ROLE": "gpu"}) for d in devices]


def ingest_worker(concurrency: int, beat: bool = True, loglevel: str = "INFO") -> Proc:
    args = ["worker", "-Q", "ingest", "-c", str(concurrency), "-n", "ingest@%h", "-E", "--loglevel", loglevel]
    if beat:
        get_settings().data_dir.mkdir(parents=True, exist_ok=True)  # beat keeps its schedule file there
        args.append("-B")  # the reconciler's schedule; run exactly one beat per deployment
    return Proc("ingest", celery(*args), {"CUDA_VISIBLE_DEVICES": "", "SPEECHQ_WORKER_ROLE": "ingest"})


def flower(port: int) -> Proc:
    return Proc("flower", celery("flower", f"--port={port}", "--address=127.0.0.1"), {})


def api(host: str, port: int) -> Proc:
    return Proc("api", [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
                        "--log-level", "warning"], {})


def valkey(port: int, data_dir: Path) -> Proc:
    from shared.broker import command

    return Proc("valkey", command(port, data_dir), {})
