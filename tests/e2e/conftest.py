"""The whole stack as real processes: uvicorn API, Celery ingest and gpu-queue workers, Valkey."""

from __future__ import annotations

import os
import time
from pathlib import Path
from unittest import mock

import httpx
import pytest
import redis

from tests.conftest import free_port

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
        "SPEECHQ_IMPORT_ROOT": str(imports), "SPEECHQ_BATCH_SECONDS": "60",
        "SPEECHQ_RECONCILE_INTERVAL_SECONDS": "5", "SPEECHQ_BATCH_FLUSH_SECONDS": "2",
        "SPEECHQ_TASK_DEADLINE_SECONDS": "30",
    }
    with mock.patch.dict(os.environ, env):
        stack = Stack(Settings(), flower=False, ingest_concurrency=2)
        stack.start()
        try:
            client = Api(stack.api_url, stack)
            client.imports = imports
            client.database_url = database_url
            yield client
        finally:
            stack.stop()
