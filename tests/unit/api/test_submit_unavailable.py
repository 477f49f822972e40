"""An unreachable database is a 503 with Retry-After and a reason, after a short retry; never a bare 500."""

import asyncio
import time
from unittest import mock

import pytest
from fastapi.testclient import TestClient

from shared import tasks
from shared.config import get_settings
from tests.conftest import free_port


@pytest.fixture
def client(tmp_path, monkeypatch):
    """The API on a PostgreSQL URL where nothing listens (started without its lifespan: no migration)."""
    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/speechq")
    monkeypatch.setenv("SPEECHQ_DB_RETRY_SECONDS", "1")
    get_settings.cache_clear()
    from api.main import create_app

    with mock.patch.object(tasks.app, "send_task"):
        yield TestClient(create_app(), raise_server_exceptions=False)
    get_settings.cache_clear()


def assert_503(r):
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) > 0
    assert "database" in r.json()["reason"]


def test_reads_answer_503_after_a_short_retry(client):
    started = time.monotonic()
    assert_503(client.get("/v1/jobs/0123"))
    assert 1 <= time.monotonic() - started < 10  # retried for SPEECHQ_DB_RETRY_SECONDS, then answered
    assert_503(client.get("/v1/jobs"))


def test_submissions_answer_503_and_keep_no_upload(client, tmp_path):
    r = client.post("/v1/jobs", files=[("files", ("a.wav", b"RIFF0000WAVE"))], headers={"Idempotency-Key": "k"})
    assert_503(r)
    r = client.post("/v1/jobs", files=[("files", ("a.wav", b"RIFF0000WAVE"))])
    assert_503(r)
    uploads = tmp_path / "spool" / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_a_bad_statement_stays_a_500():
    """Only an unreachable database is a 503: an error in a statement is the server's fault, and says so."""
    from sqlalchemy import exc as sa_exc

    from api import errors

    err = sa_exc.ProgrammingError("SELECT nope", {}, Exception("syntax error"))
    request = mock.Mock(method="GET", url=mock.Mock(path="/v1/jobs"))
    assert asyncio.run(errors.database_error(request, err)).status_code == 500
    gone = sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    assert asyncio.run(errors.database_error(request, gone)).status_code == 503
