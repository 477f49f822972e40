"""Jobs in flight per API key (issue 14): a key with SPEECHQ_MAX_JOBS_IN_FLIGHT jobs queued or running is refused
with 429 and Retry-After on both submission routes, until one of its jobs ends; other keys and retries of an
existing job are not refused."""

from unittest import mock

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api import keys
from shared import tasks
from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Job, JobState

LIMIT = 2
WAV = [("files", ("a.wav", b"RIFF0000WAVE"))]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there: heartbeats unknown
    monkeypatch.setenv("SPEECHQ_IMPORT_ROOT", str(tmp_path / "imports"))
    monkeypatch.setenv("SPEECHQ_MAX_JOBS_IN_FLIGHT", str(LIMIT))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    (tmp_path / "imports").mkdir()
    (tmp_path / "imports" / "call.wav").write_bytes(b"RIFF0000WAVE")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def client(env):
    from api.main import create_app

    with mock.patch.object(tasks.app, "send_task"), TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def _refused(r) -> None:
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) > 0
    assert "SPEECHQ_MAX_JOBS_IN_FLIGHT" in r.json()["detail"] and f"is {LIMIT}" in r.json()["detail"]


def test_keyless_owner_is_capped_on_both_routes_until_a_job_ends(client, env):
    first = client.post("/v1/jobs", files=WAV, headers={"Idempotency-Key": "one"})
    second = client.post("/v1/jobs/paths", json={"paths": ["call.wav"]})
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    _refused(client.post("/v1/jobs", files=WAV))
    _refused(client.post("/v1/jobs/paths", json={"paths": ["call.wav"]}))
    # a retry of a job that exists is answered, not refused
    again = client.post("/v1/jobs", files=WAV, headers={"Idempotency-Key": "one"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    with session_scope() as db:  # one job ends: room for one more
        db.execute(update(Job).where(Job.id == first.json()["id"]).values(state=JobState.done))
    assert client.post("/v1/jobs/paths", json={"paths": ["call.wav"]}).status_code == 201
    _refused(client.post("/v1/jobs", files=WAV))
    with session_scope() as db:
        assert db.query(Job).count() == 3
    # refused uploads leave no folder: only the one upload job has one
    assert [p.name for p in (env / "spool" / "uploads").iterdir()] == [first.json()["id"]]


def test_each_key_has_its_own_cap(client, env):
    with session_scope() as db:
        _, a = keys.create(db, "a")
        _, b = keys.create(db, "b")
    for _ in range(LIMIT):
        assert client.post("/v1/jobs", files=WAV, headers={"Authorization": f"Bearer {a}"}).status_code == 201
    _refused(client.post("/v1/jobs", files=WAV, headers={"Authorization": f"Bearer {a}"}))
    assert client.post("/v1/jobs", files=WAV, headers={"Authorization": f"Bearer {b}"}).status_code == 201
