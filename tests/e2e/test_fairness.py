"""Fairness between jobs (issue 14), with real processes: a small job sent after a large one is not stuck behind
the large one's whole backlog. One ingest process, so that the order the broker serves is the order of the work."""

from __future__ import annotations

import io
import os
import time
from unittest import mock

import numpy as np
import pytest
import redis
import soundfile as sf
from sqlalchemy import create_engine, func, select

from shared.schema import File
from tests.conftest import free_port
from tests.e2e.conftest import Api

pytestmark = pytest.mark.e2e
LARGE = 600  # files of the large job: at one ingest process, a minute or more of work in FIFO order


def tiny_wav(seed: int, seconds: float = 0.4, rate: int = 8000) -> bytes:
    """A distinct (by seed) short mono 8 kHz recording of band-limited noise."""
    rng = np.random.default_rng(seed)
    audio = np.convolve(rng.standard_normal(int(seconds * rate)), np.hanning(9) / 4.5, mode="same") * 0.1
    out = io.BytesIO()
    sf.write(out, audio.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def stack(redis_url, models_dir, tmp_path_factory):
    from api.stack import Stack
    from shared.config import Settings

    data = tmp_path_factory.mktemp("fair-data")
    imports = tmp_path_factory.mktemp("fair-imports")
    database_url = f"sqlite:///{data / 'speechq.db'}"
    broker = redis_url.rsplit("/", 1)[0] + "/4"
    redis.Redis.from_url(broker).flushdb()
    env = {
        "SPEECHQ_DATA_DIR": str(data), "DATABASE_URL": database_url, "REDIS_URL": broker,
        "SPEECHQ_MODELS_DIR": str(models_dir), "SPEECHQ_API_PORT": str(free_port()),
        "SPEECHQ_IMPORT_ROOT": str(imports), "SPEECHQ_BATCH_SECONDS": "60", "SPEECHQ_BATCH_FLUSH_SECONDS": "1",
        "SPEECHQ_RECONCILE_INTERVAL_SECONDS": "5", "SPEECHQ_TASK_DEADLINE_SECONDS": "600",
    }
    with mock.patch.dict(os.environ, env):
        s = Stack(Settings(), flower=False, ingest_concurrency=1)
        try:
            s.start()
            client = Api(s.api_url, s)
            client.imports, client.database_url = imports, database_url
            yield client
        finally:
            s.stop()


def file_states(engine, job_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(File.state, func.count()).where(File.job_id == job_id).group_by(File.state))
        return {state.value: n for state, n in rows}


def test_a_small_job_overtakes_a_large_jobs_backlog(stack):
    folder = stack.imports / "large"
    folder.mkdir()
    for i in range(LARGE):
        (folder / f"call{i:04d}.wav").write_bytes(tiny_wav(i))
    for i in range(2):
        (stack.imports / f"small{i}.wav").write_bytes(tiny_wav(100_000 + i, seconds=1.0))
    engine = create_engine(stack.database_url)
    r = stack.http.post("/v1/jobs/paths", json={"paths": [f"large/call{i:04d}.wav" for i in range(LARGE)]})
    assert r.status_code == 201, r.text
    large = r.json()["id"]
    deadline = time.monotonic() + 120
    while file_states(engine, large).get("queued", LARGE) == LARGE:  # its ingest is under way
        assert time.monotonic() < deadline, "the large job's ingest never started"
        time.sleep(0.2)
    r = stack.http.post("/v1/jobs/paths", json={"paths": ["small0.wav", "small1.wav"]})
    assert r.status_code == 201, r.text
    small = stack.wait(r.json()["id"], timeout=300)
    at_small_end = file_states(engine, large)
    assert small["state"] == "done" and small["files_done"] == 2, small
    # In FIFO order the small job's files would come after every file of the large one.
    assert at_small_end.get("queued", 0) > LARGE // 2, at_small_end
    stack.http.post(f"/v1/jobs/{large}/cancel").raise_for_status()
    assert stack.wait(large)["state"] == "cancelled"
    engine.dispose()
