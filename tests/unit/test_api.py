"""API behaviour that needs no workers: limits, refusals, health, OpenAPI."""

import pytest
from fastapi.testclient import TestClient

from shared.config import get_settings


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SPEECHQ_MAX_UPLOAD_BYTES", "10000")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("SPEECHQ_IMPORT_ROOT", raising=False)
    get_settings.cache_clear()
    from api.main import create_app

    with TestClient(create_app()) as c:
        yield c
    get_settings.cache_clear()


def test_oversized_upload_is_refused_with_413(client, tmp_path):
    r = client.post("/v1/jobs", files=[("files", ("big.wav", b"\0" * 50000))])
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_unknown_language_is_refused(client):
    r = client.post("/v1/jobs", files=[("files", ("a.wav", b"RIFF"))], data={"language": "klingon"})
    assert r.status_code == 422 and "unknown language" in r.text


def test_server_paths_disabled_without_import_root(client):
    r = client.post("/v1/jobs/paths", json={"paths": ["/etc/passwd"]})
    assert r.status_code == 422 and "SPEECHQ_IMPORT_ROOT" in r.text


def test_health_reports_broker_down(client):
    r = client.get("/v1/health")
    assert r.status_code == 503
    body = r.json()
    assert body["database"] == "ok" and body["broker"].startswith("error")


def test_unknown_job_is_404(client):
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.get("/v1/jobs/nope/results").status_code == 404


def test_openapi_lists_versioned_paths(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/paths", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/results",
            "/v1/jobs/{job_id}/cancel", "/v1/health"} <= set(paths)
