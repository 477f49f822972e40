"""`speechq up`: the whole stack on one machine, supervised; Ctrl-C stops all of it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from shared.broker import start_embedded
from shared.config import Settings
from shared.db import migrate
from workers import launcher

log = logging.getLogger(__name__)


class Stack:
    def __init__(self, settings: Settings, gpus: str | None = None, flower: bool = True,
                 ingest_concurrency: int | None = None, log_dir: Path | None = None):
        self.settings = settings
        self.gpus = gpus
        self.flower = flower
        self.ingest_concurrency = ingest_concurrency or max(1, (os.cpu_count() or 2) - 1)
        self.log_dir = Path(log_dir or settings.data_dir / "logs")
        self.redis = None
        self.procs: dict[str, tuple[launcher.Proc, subprocess.Popen]] = {}
        self.env: dict[str, str] = {}

    def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {"SPEECHQ_DATA_DIR": str(s.data_dir.resolve())}
        if not s.redis_url:
            self.redis = start_embedded(s.embedded_redis_port, s.data_dir / "redis")
            self.env["REDIS_URL"] = f"redis://127.0.0.1:{self.redis.port}/0"
        migrate(s.database)
        specs = [launcher.api(s.api_host, s.api_port), launcher.ingest_worker(self.ingest_concurrency)]
        specs += launcher.gpu_workers(self.gpus or s.gpu_devices, prefetch=s.gpu_prefetch)
        if self.flower:
            specs.append(launcher.flower(s.flower_port))
        for spec in specs:
            self._spawn(spec)
        self.wait_api()

    def _spawn(self, spec: launcher.Proc) -> None:
        out = open(self.log_dir / f"{spec.name}.log", "ab")
        env = {**os.environ, **self.env, **spec.env}
        proc = subprocess.Popen(spec.argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[spec.name] = (spec, proc)
        log.info("started %s (pid %d), log %s", spec.name, proc.pid, self.log_dir / f"{spec.name}.log")

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def wait_api(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api_url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            spec, proc = self.procs["api"]
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited with {proc.returncode}; see {self.log_dir / 'api.log'}")
            time.sleep(0.5)
        raise RuntimeError(f"the API did not answer within {timeout:.0f} s; see {self.log_dir / 'api.log'}")

    def supervise_once(self) -> None:
        """Restart any process that died (a GPU worker exits on a CUDA error by design)."""
        for name, (spec, proc) in list(self.procs.items()):
            if proc.poll() is not None:
                log.warning("%s exited with %s; restarting", name, proc.returncode)
                self._spawn(spec)

    def run_forever(self) -> None:
        while True:
            time.sleep(2)
            self.supervise_once()

    def stop(self) -> None:
        for name, (_spec, proc) in self.procs.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, (_spec, proc) in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        log.info("stack stopped")
