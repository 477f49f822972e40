"""Submission: idempotent with an Idempotency-Key, no job without its id returned, no upload folder left behind."""

import threading
from pathlib import Path
from unittest import mock

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared import tasks
from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Job


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there: heartbeats unknown
    monkeypatch.setenv("SPEECHQ_IMPORT_ROOT", str(tmp_path / "imports"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    (tmp_path / "imports").mkdir()
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def sent():
    """The messages the API sends, recorded instead of published."""
    with mock.patch.object(tasks.app, "send_task") as send:
        yield send


@pytest.fixture
def client(env, sent):
    from api.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def jobs_in_db() -> list[str]:
    with session_scope() as db:
        return list(db.scalars(select(Job.id)))


def upload_folders(data: Path) -> list[str]:
    root = data / "spool" / "uploads"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_retry_with_the_same_key_returns_the_first_job(client, env, sent):
    files = [("files", ("a.wav", b"RIFF0000WAVE"))]
    first = client.post("/v1/jobs", files=files, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/jobs", files=files, headers={"Idempotency-Key": "k-1"})
    other = client.post("/v1/jobs", files=files, headers={"Idempotency-Key": "k-2"})
    assert first.status_code == 201 and again.status_code == 200 and other.status_code == 201
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]
    assert sorted(jobs_in_db()) == sorted([first.json()["id"], other.json()["id"]])
    assert upload_folders(env) == sorted([first.json()["id"], other.json()["id"]])
    assert sent.call_count == 2  # one message per job, none for the retry


def test_paths_submission_is_idempotent_too(client, env, sent):
    (env / "imports" / "a.wav").write_bytes(b"RIFF0000WAVE")
    body = {"paths": ["a.wav"]}
    first = client.post("/v1/jobs/paths", json=body, headers={"Idempotency-Key": "p-1"})
    again = client.post("/v1/jobs/paths", json=body, headers={"Idempotency-Key": "p-1"})
    plain = client.post("/v1/jobs/paths", json=body)
    assert (first.status_code, again.status_code, plain.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != plain.json()["id"]
    assert len(jobs_in_db()) == 2


def test_concurrent_requests_with_one_key_make_one_job(env, sent):
    """Two requests with the same key both pass the replay check: the insert decides, the loser stores nothing."""
    from shared.db import migrate
    from api import submit

    migrate()
    (env / "a.wav").write_bytes(b"RIFF0000WAVE")
    item = submit.Incoming(name="a.wav", path=env / "a.wav", size=12)
    outcomes = []
    barrier = threading.Barrier(2)

    def post(job_id):
        barrier.wait()
        outcomes.append(submit.store(get_settings(), [item], {"id": job_id, "idempotency_key": "same"}))

    threads = [threading.Thread(target=post, args=(i * 32,)) for i in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(created for created, _ in outcomes) == [False, True]
    assert len({out.id for _, out in outcomes}) == 1
    assert jobs_in_db() == [outcomes[0][1].id]


def test_a_failure_after_the_upload_is_saved_leaves_no_folder_and_no_job(client, env):
    with mock.patch("api.submit.mapping.job_status", side_effect=RuntimeError("boom")):
        r = client.post("/v1/jobs", files=[("files", ("a.wav", b"RIFF0000WAVE"))])
    assert r.status_code == 500
    assert jobs_in_db() == [] and upload_folders(env) == []


def test_a_refused_job_leaves_no_folder(client, env):
    r = client.post("/v1/jobs", files=[("files", ("a.wav", b"RIFF"))], data={"language": "klingon"})
    assert r.status_code == 422 and upload_folders(env) == [] and jobs_in_db() == []


def test_a_broker_failure_after_the_commit_still_returns_the_job(client, env, sent):
    """The job is stored: the client gets its id, and the reconciler sends the messages later."""
    sent.side_effect = ConnectionError("broker down")
    r = client.post("/v1/jobs", files=[("files", ("a.wav", b"RIFF0000WAVE"))])
    assert r.status_code == 201
    assert jobs_in_db() == [r.json()["id"]] and upload_folders(env) == [r.json()["id"]]


def test_idempotency_key_is_bounded(client):
    r = client.post("/v1/jobs", files=[("files", ("a.wav", b"RIFF0000WAVE"))], headers={"Idempotency-Key": "x" * 300})
    assert r.status_code == 422
