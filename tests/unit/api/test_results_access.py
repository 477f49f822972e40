"""Finding jobs, exports, callback URLs and /metrics through the real app (no workers), SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from shared import counters
from shared.config import get_settings
from shared.db import migrate, session_scope
from shared.schema import Batch, BatchState, Job, JobState
from shared.tasks import queue_keys
from tests.unit.exports.conftest import make_job

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def client(database_url, redis_url, tmp_path_factory):
    broker = redis_url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(broker).flushdb()
    env = {"SPEECHQ_DATA_DIR": str(tmp_path_factory.mktemp("data")), "DATABASE_URL": database_url,
           "REDIS_URL": broker, "SPEECHQ_API_HOST": "127.0.0.1", "SPEECHQ_WEBHOOK_SECRET": "s",
           "SPEECHQ_IMPORT_ROOT": str(tmp_path_factory.mktemp("imports"))}
    with mock.patch.dict("os.environ", env):
        get_settings.cache_clear()
        migrate(database_url)
        make_job(database_url, n_files=3, segments_per_channel=2)
        with session_scope(database_url) as db:  # 30 jobs a day apart, named by their number, in three states
            db.execute(insert(Job), [dict(id=f"{i:032d}", name=f"night-{i:02d}" + ("-QA" if i % 10 == 0 else ""),
                                          state=(JobState.done, JobState.failed, JobState.running)[i % 3],
                                          created_at=T0 + timedelta(days=i)) for i in range(30)])
        from api.main import create_app

        with TestClient(create_app()) as c:
            c.database_url = database_url
            yield c
    get_settings.cache_clear()


def ids(r) -> list[str]:
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()]


def test_list_filters_combine(client):
    got = ids(client.get("/v1/jobs", params={"state": ["failed", "running"], "name": "night",
                                             "created_after": "2026-11-10T00:00:00Z",
                                             "created_before": "2026-11-20T00:00:00+00:00", "limit": 100}))
    assert got == [f"{i:032d}" for i in range(18, 8, -1) if i % 3 != 0]  # day i is Nov i+1
    assert ids(client.get("/v1/jobs", params={"name": "qa"})) == [f"{i:032d}" for i in (20, 10, 0)]
    assert ids(client.get("/v1/jobs", params={"name": "%"})) == []  # a literal %, not a wildcard
    assert client.get("/v1/jobs", params={"state": "lost"}).status_code == 422


def test_cursor_pages_through_every_job_once(client):
    seen, cursor, pages = [], None, 0
    while True:
        r = client.get("/v1/jobs", params={"name": "night", "limit": 7, **({"cursor": cursor} if cursor else {})})
        seen += ids(r)
        pages += 1
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            break
    assert seen == [f"{i:032d}" for i in range(29, -1, -1)] and pages == 5
    assert client.get("/v1/jobs", params={"cursor": "garbage!"}).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 501}).status_code == 422


def test_export_route_streams_each_format(client):
    job = "j" * 32
    r = client.get(f"/v1/jobs/{job}/export", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.count("\r\n") == 1 + 3 * 2 * 2
    assert 'filename="speechq-' in r.headers["content-disposition"]
    first = json.loads(client.get(f"/v1/jobs/{job}/export").text.splitlines()[0])
    assert first["file"] == "call-00000.wav" and first["channel"] == "agent"
    vtt = client.get(f"/v1/jobs/{job}/export", params={"format": "vtt", "file_id": first["file_id"]})
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT") and vtt.text.count("<v ") == 4
    assert client.get(f"/v1/jobs/{job}/export", params={"format": "srt"}).status_code == 422
    assert client.get(f"/v1/jobs/{job}/export", params={"format": "srt", "file_id": "nope"}).status_code == 404
    assert client.get(f"/v1/jobs/{'x' * 32}/export").status_code == 404
    assert client.get(f"/v1/jobs/{job}/export", params={"format": "xlsx"}).status_code == 422
    z = client.get(f"/v1/jobs/{job}/export", params={"format": "zip"})
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        assert len(zf.namelist()) == 3 * 4 and zf.testzip() is None


@pytest.mark.parametrize("url, status", [("https://receiver.example/hook", 201), ("ftp://receiver.example/x", 422),
                                         ("not a url", 422)])
def test_callback_url_on_submission(client, url, status, tmp_path):
    (get_settings().import_root / "a.txt").write_text("notes")  # a sidecar: the job ends at once, no worker
    r = client.post("/v1/jobs/paths", json={"paths": ["a.txt"], "callback_url": url})
    assert r.status_code == status, r.text
    if status == 201:
        assert r.json()["callback_url"] == url
    if status == 422:
        assert "callback_url" in r.text
        return
    r = client.post("/v1/jobs", files=[("files", ("notes.txt", b"x"))], data={"callback_url": "gopher://x"})
    assert r.status_code == 422 and "callback_url" in r.text


def test_metrics_read_the_database_and_broker(client):
    now = datetime.now(timezone.utc)
    with session_scope(client.database_url) as db:
        db.execute(insert(Batch), [dict(id=f"b{i:031d}", state=BatchState.done, path="/x", num_segments=1,
                                        audio_seconds=1, padded_seconds=1, worker="gpu0@h",
                                        created_at=now - timedelta(seconds=20), started_at=now - timedelta(seconds=4),
                                        updated_at=now) for i in range(3)])
    counters.add(get_settings(), counters.REENQUEUED, files=2, batches=1)
    broker = redis.Redis.from_url(get_settings().broker)
    broker.rpush("gpu", b"m1", b"m2")
    broker.rpush(queue_keys("gpu")[3], b"m3")  # a message of a later priority counts too
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(r.text) for s in f.samples}
    assert samples[("speechq_jobs", (("state", "running"),))] == 10
    assert samples[("speechq_files", (("state", "done"),))] == 3
    assert samples[("speechq_segments", (("state", "done"),))] == 12
    assert samples[("speechq_queue_depth", (("queue", "gpu"),))] == 3
    assert samples[("speechq_reconciler_reenqueued_total", (("kind", "files"),))] == 2
    assert samples[("speechq_batch_latency_seconds_count", ())] == 3
    assert samples[("speechq_batch_latency_seconds_bucket", (("le", "10.0"),))] == 0
    assert samples[("speechq_batch_latency_seconds_bucket", (("le", "30.0"),))] == 3
    assert samples[("speechq_batch_latency_seconds_sum", ())] == pytest.approx(60, abs=0.5)
    assert samples[("speechq_gpu_busy_seconds_total", (("worker", "gpu0@h"),))] == pytest.approx(12, abs=0.5)
    assert samples[("speechq_broker_up", ())] == 1


def cli(client, *args: str):
    """`speechq ARGS` with its HTTP calls answered by the app in this process."""
    import httpx
    from typer.testing import CliRunner

    from api.cli import app

    with mock.patch.object(httpx, "get", client.get), mock.patch.object(httpx, "stream", client.stream):
        return CliRunner().invoke(app, [*args, "--api", "http://testserver"], env={"COLUMNS": "200"})


def test_list_command_filters_and_pages(client):
    r = cli(client, "list", "--name", "night", "--state", "done", "--limit", "4", "--json")
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["id"] for x in r.output.splitlines()] == [f"{i:032d}" for i in (27, 24, 21, 18)]
    r = cli(client, "list", "--name", "night", "--state", "done", "--limit", "4", "--all", "--json")
    assert [json.loads(x)["id"] for x in r.output.splitlines()] == [f"{i:032d}" for i in range(27, -1, -3)]
    r = cli(client, "list", "--name", "-QA", "--since", "2026-11-05")
    assert r.exit_code == 0 and "night-20-QA" in r.output and "night-10-QA" in r.output and "night-00" not in r.output
    assert cli(client, "list", "--state", "lost").exit_code == 2


def test_export_command_writes_files(client, tmp_path):
    job = "j" * 32
    r = cli(client, "export", job, "--format", "csv", "-o", str(tmp_path / "csv"))
    assert r.exit_code == 0, r.output
    (written,) = (tmp_path / "csv").iterdir()
    assert written.name == f"speechq-{job}.csv" and written.read_text().count("\n") == 1 + 12
    r = cli(client, "export", job, "--format", "srt", "-o", str(tmp_path / "srt"))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "srt").iterdir()) == [f"call-{i:05d}.wav.srt" for i in range(3)]
    assert "[customer]" in (tmp_path / "srt" / "call-00001.wav.srt").read_text()
    assert cli(client, "export", "x" * 32, "-o", str(tmp_path / "none")).exit_code == 3
