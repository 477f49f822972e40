"""The stack the e2e bench times: `speechq up --no-flower` on the bench's calls and models, in its own process
group, started only on free ports, called ready when its API answers and every GPU worker has its models, and
stopped with its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

def ports_free(port: int) -> None:
    """The API's and the embedded Valkey's ports must be free: otherwise `up` refuses to start, and an earlier
    stack that still holds them (a bench run killed before it could stop its stack) would answer for it."""
    from api.preflight import port_free

    for name, env, number in [("API", "SPEECHQ_API_PORT", port),
                              ("embedded Valkey", "SPEECHQ_EMBEDDED_REDIS_PORT", port + 1)]:
        check = port_free(name, "127.0.0.1", number, env)
        if not check.ok:
            raise SystemExit(f"{check.name}: {check.message}; stop the stack that holds it, or pass --port")


def start_stack(work: Path, calls: Path, dirs: dict[str, Path], port: int,
                memory_gb: float | None) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "SPEECHQ_DATA_DIR": str(work / "data"), "SPEECHQ_IMPORT_ROOT": str(calls),
           "SPEECHQ_SENSEVOICE_MODEL_DIR": str(dirs["sensevoice"]),
           "SPEECHQ_EMOTION2VEC_MODEL_DIR": str(dirs["e2v-16+8"]), "SPEECHQ_API_PORT": str(port),
           "SPEECHQ_EMBEDDED_REDIS_PORT": str(port + 1)}
    # one compile cache for every run, beside the models (each run has a fresh data folder): as a restarted stack
    env.setdefault("SPEECHQ_COMPILE_CACHE_DIR", str(dirs["sensevoice"].parent / "compile-cache"))
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    if memory_gb:
        env["SPEECHQ_GPU_MEMORY_GB"] = str(memory_gb)
    log = open(work / "up.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "up", "--no-flower"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, env


def wait_ready(proc: subprocess.Popen, env: dict, work: Path, timeout: float = 600) -> None:
    """Until the API answers and every GPU worker's heartbeat says its models are ready."""
    from shared import heartbeat
    from shared.config import Settings

    settings = Settings(_env_file=None, data_dir=Path(env["SPEECHQ_DATA_DIR"]),
                        embedded_redis_port=int(env["SPEECHQ_EMBEDDED_REDIS_PORT"]))
    url = f"http://127.0.0.1:{env['SPEECHQ_API_PORT']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"speechq up exited {proc.returncode}:\n{(work / 'up.log').read_text()[-4000:]}")
        try:
            httpx.get(f"{url}/v1/health", timeout=5).raise_for_status()
            gpu = [w for w in heartbeat.alive(settings) if w.get("role") == "gpu"]
            if gpu and all(w.get("state") == "ready" for w in gpu) and proc.poll() is None:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise SystemExit(f"the stack was not ready in {timeout:.0f} s:\n{(work / 'up.log').read_text()[-4000:]}")


def stop_stack(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
