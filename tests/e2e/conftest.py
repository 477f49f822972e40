"""The whole stack as real processes: uvicorn API, Celery ingest and gpu-queue workers, Valkey."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import httpx
import psutil
import pytest
import redis

from tests.conftest import free_port
from shared.orphans import die_with_parent

pytestmark = pytest.mark.e2e


class Api:
    def __init__(self, url: str, stack):
        self.url = url
        self.stack = stack
        self.http = httpx.Client(base_url=url, timeout=120)

    def submit(self, paths: list[Path], **data) -> dict:
        files = [("files", (p.name, p.read_bytes())) for p in paths]
        r = self.http.post("/v1/jobs", files=files, data=data)
        assert r.status_code == 201, r.text
        return r.json()

    def wait(self, job_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.http.get(f"/v1/jobs/{job_id}").json()
            if st["state"] in ("done", "failed", "cancelled"):
                return st
            self.stack.supervise_once()
            time.sleep(0.5)
        logs = "\n".join(p.read_text()[-3000:] for p in self.stack.log_dir.glob("*.log"))
        raise AssertionError(f"job {job_id} did not finish: {st}\n{logs}")

    def results(self, job_id: str) -> dict:
        r = self.http.get(f"/v1/jobs/{job_id}/results")
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def api(database_url, redis_url, models_dir, tmp_path_factory):
    from api.stack import Stack
    from shared.config import Settings

    data = tmp_path_factory.mktemp("data")
    imports = tmp_path_factory.mktemp("imports")
    broker = redis_url.rsplit("/", 1)[0] + ("/1" if database_url.startswith("sqlite") else "/2")
    redis.Redis.from_url(broker).flushdb()
    env = {
        "SPEECHQ_DATA_DIR": str(data), "DATABASE_URL": database_url, "REDIS_URL": broker,
        "SPEECHQ_MODELS_DIR": str(models_dir), "SPEECHQ_API_PORT": str(free_port()),
        "SPEECHQ_IMPORT_ROOT": str(imports), "SPEECHQ_BATCH_SECONDS": "60", "SPEECHQ_WORD_TIMINGS": "true",
        "SPEECHQ_RECONCILE_INTERVAL_SECONDS": "5", "SPEECHQ_BATCH_FLUSH_SECONDS": "2",
        "SPEECHQ_TASK_DEADLINE_SECONDS": "30",
        "SPEECHQ_WEBHOOK_SECRET": "e2e-webhook-secret", "SPEECHQ_WEBHOOK_BACKOFF_SECONDS": "1",
    }
    with mock.patch.dict(os.environ, env):
        stack = Stack(Settings(), flower=False, ingest_concurrency=2)
        try:  # a start that fails half way still stops what it started
            stack.start()
            client = Api(stack.api_url, stack)
            client.imports = imports
            client.database_url = database_url
            yield client
        finally:
            stack.stop()


class Up:
    """`speechq up` as a real process, as an operator starts it; its output goes to a file."""

    def __init__(self, env: dict[str, str], port: int, out: Path, ignore_sigint: bool = False):
        self.port, self.out = port, out
        pytest_pid = os.getpid()

        def prepare() -> None:  # even a pytest killed outright (timeout) takes the stack with it
            die_with_parent(pytest_pid)
            if ignore_sigint:  # as a shell starts a background job
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        with open(out, "w") as sink:
            self.proc = subprocess.Popen([sys.executable, "-m", "api.cli", "up"], env=env, stdout=sink,
                                         stderr=subprocess.STDOUT, preexec_fn=prepare)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def health(self, ready, timeout: float = 300) -> dict:
        """Poll /v1/health until `ready(body)`; fails with the output if `up` exits or time runs out."""
        deadline = time.monotonic() + timeout
        body = None
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"http://127.0.0.1:{self.port}/v1/health", timeout=5).json()
                if ready(body):
                    return body
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"speechq up exited with {self.proc.returncode}:\n{self.output()}"
            time.sleep(0.5)
        raise AssertionError(f"health never became ready: {body}\n{self.output()}")

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
                self.proc.wait()


def still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def workers_alive(body: dict) -> bool:
    """Every process of the stack exists: the ingest worker, and the GPU worker's pool child (loading or not)."""
    workers = body.get("workers") or {}
    return bool(workers.get("ingest")) and bool(workers.get("gpu"))


@pytest.fixture
def up_env(models_dir, tmp_path) -> dict[str, str]:
    """Embedded defaults in a fresh data folder, on free ports."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(SPEECHQ_DATA_DIR=str(tmp_path / "data"), SPEECHQ_MODELS_DIR=str(models_dir),
               SPEECHQ_API_PORT=str(free_port()), SPEECHQ_FLOWER_PORT=str(free_port()),
               SPEECHQ_EMBEDDED_REDIS_PORT=str(free_port()), COLUMNS="200")
    return env


@pytest.fixture
def start_up(tmp_path):
    """Starts `speechq up`; whatever the test does, the process is stopped afterwards."""
    started: list[Up] = []

    def start(env: dict[str, str], ignore_sigint: bool = False) -> Up:
        up = Up(env, int(env["SPEECHQ_API_PORT"]), tmp_path / f"up-{len(started)}.out", ignore_sigint)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()
