"""Command lines of the stack's processes, and how they are started so that none outlives its parent.

Devices are counted in a child process so that the launcher itself never initialises CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import get_settings
from shared.tasks import HOUSEKEEPING

@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


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


def celery(role: str, *args: str) -> list[str]:
    """A Celery command line for `role`: "ingest" or "gpu" (a worker registers its role's tasks only), or
    "monitor" (Flower, which needs the app alone)."""
    app = {"ingest": "workers.ingest.worker", "gpu": "workers.gpu.worker", "monitor": "shared.tasks"}[role]
    return [sys.executable, "-m", "celery", "-A", app, *args]


def gpu_workers(spec: str | None, loglevel: str = "INFO", prefetch: int = 1) -> list[Proc]:
    """One worker per device, in the solo pool: the process that loads the models and runs the batches is
    the one this supervisor watches, so a crash (SIGKILL, out of memory, `os._exit` on a CUDA error) ends the
    worker and the supervisor restarts it. A prefork child would be replaced by its parent instead, which
    kills a child not up within 4 s (worker_proc_alive_timeout) while the models take 8-70 s to load."""
    devices = device_ids(spec)
    extra = ["--prefetch-multiplier", str(prefetch)] if prefetch != 1 else []
    if not devices:  # no CUDA: one gpu-queue worker on the CPU keeps the pipeline whole
        return [Proc("gpu-cpu", celery("gpu", "worker", "-Q", "gpu", "-P", "solo", "-c", "1", "-n", "gpu-cpu@%h",
                                       "-E", "--loglevel", loglevel, *extra),
                     {"CUDA_VISIBLE_DEVICES": "", "SPEECHQ_WORKER_ROLE": "gpu"})]
    # a device named twice (`--gpus 0,0`: two workers sharing one card) gets distinct worker names
    names = [f"gpu{d}" if devices.count(d) == 1 else f"gpu{d}-{devices[:i].count(d)}" for i, d in enumerate(devices)]
    return [Proc(name, celery("gpu", "worker", "-Q", "gpu", "-P", "solo", "-c", "1", "-n", f"{name}@%h",
                              "-E", "--loglevel", loglevel, *extra),
                 {"CUDA_VISIBLE_DEVICES": d, "SPEECHQ_WORKER_ROLE": "gpu"}) for name, d in zip(names, devices)]


def ingest_worker(concurrency: int, loglevel: str = "INFO") -> Proc:
    """The CPU pool; it sees no GPU unless SPEECHQ_VAD_DEVICE=cuda, which gives it the first GPU device."""
    args = ["worker", "-Q", "ingest", "-c", str(concurrency), "-n", "ingest@%h", "-E", "--loglevel", loglevel]
    settings = get_settings()
    visible = device_ids(settings.gpu_devices)[:1] if settings.vad_device == "cuda" else []
    return Proc("ingest", celery("ingest", *args),
                {"CUDA_VISIBLE_DEVICES": ",".join(visible), "SPEECHQ_WORKER_ROLE": "ingest"})


def housekeeping_worker(loglevel: str = "INFO") -> Proc:
    """The reconciler's own consumer (queue "housekeeping", solo pool) with the beat that schedules it: it
    runs on time whatever the ingest backlog. Run exactly one beat per deployment."""
    get_settings().data_dir.mkdir(parents=True, exist_ok=True)  # beat keeps its schedule file there
    args = ["worker", "-Q", HOUSEKEEPING, "-P", "solo", "-n", "housekeeping@%h", "-B", "--loglevel", loglevel]
    return Proc("housekeeping", celery("ingest", *args),
                {"CUDA_VISIBLE_DEVICES": "", "SPEECHQ_WORKER_ROLE": "housekeeping"})


def flower(port: int, basic_auth: str) -> Proc:
    """Flower on loopback, behind basic auth (`user:password`, see flower_credentials). The credentials go
    through Flower's FLOWER_BASIC_AUTH variable, the same as --basic-auth, so that `ps` does not show them."""
    return Proc("flower", celery("monitor", "flower", f"--port={port}", "--address=127.0.0.1"),
                {"FLOWER_BASIC_AUTH": basic_auth})


def flower_credentials(settings) -> tuple[str, Path | None]:
    """(user:password, the file it was read from). SPEECHQ_FLOWER_BASIC_AUTH when set; else the file
    data_dir/flower-auth, written once (mode 0600) with user `speechq` and a random password."""
    if settings.flower_basic_auth is not None:
        return settings.flower_basic_auth.get_secret_value(), None
    path = (settings.data_dir / "flower-auth").resolve()
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"speechq:{secrets.token_urlsafe(18)}\n")
    return path.read_text().strip(), path


def api(host: str, port: int) -> Proc:
    """uvicorn with the protocol that bounds how long a request head may take (api/limits.HeaderDeadline)."""
    return Proc("api", [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
                        "--http", UVICORN_PROTOCOL, "--log-level", "warning"], {})


UVICORN_PROTOCOL = "api.limits:HeaderDeadline"


def valkey(port: int, data_dir: Path) -> Proc:
    from shared.broker import command

    return Proc("valkey", command(port, data_dir), {})
