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


def test_docs_are_served_without_a_cdn(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "cdn." not in page.text and "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in page.text
        assert client.get(f"/static-offline-docs/{asset}").status_code == 200
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "fonts.googleapis" not in redoc.text and "cdn." not in redoc.text


# --- rows to JSON: one place, seconds, UTC, ids, emotion names, skipped files, GPU worker warnings ---

def _heartbeats(monkeypatch, beats):
    """Stand in for shared.heartbeat (another module's): alive() returns `beats`, or raises it."""
    import sys
    import types

    import shared

    def alive(_settings):
        if isinstance(beats, Exception):
            raise beats
        return beats

    fake = types.SimpleNamespace(alive=alive)
    monkeypatch.setitem(sys.modules, "shared.heartbeat", fake)
    monkeypatch.setattr(shared, "heartbeat", fake, raising=False)


def _gpu(state="ready", random=True, error=None):
    return {"hostname": "gpu0@host", "role": "gpu", "pid": 1, "seen_at": 0, "state": state, "error": error,
            "models": [{"name": "iic/SenseVoiceSmall", "sha256": "ab" * 32, "random_weights": random}]}


def _job_rows(*, state="done") -> str:
    """A finished stereo call with one result per segment, a duplicate of it, a skipped sidecar, a failed file."""
    from datetime import datetime

    from shared.db import session_scope
    from shared.schema import (Channel, File, FileState, Job, JobState, ModelVersion, Result, Segment,
                               SegmentState)

    with session_scope() as db:
        job = Job(state=JobState(state), files_total=4, files_done=2, files_failed=1, files_skipped=1,
                  audio_seconds_total=24.0, audio_seconds_done=24.0, started_at=datetime(2026, 12, 1, 22, 0, 5),
                  finished_at=datetime(2026, 12, 1, 22, 1, 0))
        db.add(job)
        db.flush()
        call = File(job_id=job.id, name="calls.zip/a.wav", path="/spool/x", state=FileState.done, format="wav/pcm",
                    sample_rate=8000, num_channels=2, duration_s=12.0, sha256="f" * 64)
        db.add(call)
        db.flush()
        db.add_all([
            File(job_id=job.id, name="calls.zip/b.wav", path="/spool/y", state=FileState.done, duplicate_of=call.id,
                 duration_s=12.0, sha256="f" * 64),
            File(job_id=job.id, name="calls.zip/notes.txt", path="", state=FileState.skipped,
                 error="sidecar file (.txt), not audio"),
            File(job_id=job.id, name="calls.zip/bad.wav", path="", state=FileState.failed,
                 error="empty file (0 bytes)"),
        ])
        model = ModelVersion(name="iic/emotion2vec_plus_large", sha256="e" * 64, random_weights=True)
        db.add(model)
        db.flush()
        for index, label, spans in ((0, "agent", [(70, 2340), (5000, 6010)]), (1, "customer", [(2620, 4200)])):
            channel = Channel(file_id=call.id, index=index, label=label, duration_s=12.0, speech_s=3.0)
            db.add(channel)
            db.flush()
            for start, end in spans:
                seg = Segment(job_id=job.id, file_id=call.id, channel_id=channel.id, start_ms=start, end_ms=end,
                              state=SegmentState.done)
                db.add(seg)
                db.flush()
                db.add(Result(segment_id=seg.id, job_id=job.id, text=f"{label} {start}", language="en",
                              emotion="NEUTRAL", event="Speech", emotion2vec_label="<unk>",
                              emotion2vec_scores={"中立/neutral": 0.25, "<unk>": 0.75}, emotion_model_id=model.id))
        return job.id


def test_results_in_seconds_with_stable_ids_and_utc(client, monkeypatch):
    _heartbeats(monkeypatch, [])
    job_id = _job_rows()
    res = client.get(f"/v1/jobs/{job_id}/results").json()
    again = client.get(f"/v1/jobs/{job_id}/results").json()
    st = res["job"]
    assert st["audio_total_s"] == 24.0 and "audio_seconds_total" not in st
    assert (st["files_done"], st["files_failed"], st["files_skipped"]) == (2, 1, 1)
    assert st["skipped"] == [{"name": "calls.zip/notes.txt", "reason": "sidecar file (.txt), not audio"}]
    assert st["errors"] == [{"name": "calls.zip/bad.wav", "error": "empty file (0 bytes)"}]
    for key in ("created_at", "started_at", "finished_at"):  # SQLite gave them back naive
        assert st[key].endswith("Z"), st[key]
    assert st["started_at"] == "2026-12-01T22:00:05Z"
    assert st["warning"] is None, "a finished job waits for nothing"
    files = {f["name"]: f for f in res["files"]}
    call = files["calls.zip/a.wav"]
    agent, customer = call["channels"]
    assert [(s["start_s"], s["end_s"]) for s in agent["segments"]] == [(0.07, 2.34), (5.0, 6.01)]
    assert customer["segments"][0]["start_s"] == 2.62 and customer["duration_s"] == 12.0
    ids = [s["id"] for c in call["channels"] for s in c["segments"]]
    assert len(set(ids)) == 3 and ids == [s["id"] for c in again["files"][0]["channels"] for s in c["segments"]]
    seg = agent["segments"][0]
    assert "start_ms" not in seg and seg["emotion2vec_label"] == "unknown"
    assert seg["emotion2vec_scores"] == {"中立/neutral": 0.25, "unknown": 0.75}
    assert files["calls.zip/b.wav"]["duplicate_of"] == "calls.zip/a.wav"
    assert files["calls.zip/b.wav"]["channels"] == call["channels"]
    notes = files["calls.zip/notes.txt"]
    assert notes["state"] == "skipped" and notes["skipped_reason"].startswith("sidecar") and notes["error"] is None
    assert files["calls.zip/bad.wav"]["error"] == "empty file (0 bytes)"
    assert res["warning"] and "RANDOM" in res["warning"] and st["random_weights"] is True


def _new_job() -> str:
    from shared.db import session_scope
    from shared.schema import Job

    with session_scope() as db:
        job = Job()
        db.add(job)
        db.flush()
        return job.id


@pytest.mark.parametrize(("beats", "random", "warning"), [
    ([_gpu(random=True)], True, None),
    ([_gpu(random=False)], False, None),
    ([_gpu(state="loading", random=True)], True, None),
    ([], False, "no live GPU worker: results will wait until one starts"),
    ([{**_gpu(state="error", error="CUDA out of memory"), "hostname": "gpu1@host"}], False,
     "every GPU worker failed (gpu1@host: CUDA out of memory): results will wait until one starts"),
    ([{"hostname": "ingest@host", "role": "ingest", "state": "ready", "models": []}], False,
     "no live GPU worker: results will wait until one starts"),
    (RuntimeError("redis down"), False, None),
    (ImportError("no shared.heartbeat yet"), False, None),
])
def test_new_job_says_what_the_live_gpu_workers_hold(client, monkeypatch, beats, random, warning):
    _heartbeats(monkeypatch, beats)
    st = client.get(f"/v1/jobs/{_new_job()}").json()
    assert st["state"] == "queued" and st["random_weights"] is random and st["warning"] == warning
    listed = client.get("/v1/jobs").json()
    assert listed[0]["random_weights"] is random and listed[0]["warning"] == warning
    res = client.get(f"/v1/jobs/{st['id']}/results").json()
    assert bool(res["warning"]) is random


def test_a_job_of_sidecars_only_is_done_at_once(client, monkeypatch):
    _heartbeats(monkeypatch, [_gpu()])
    r = client.post("/v1/jobs", files=[("files", ("notes.txt", b"call notes")), ("files", ("index.csv", b"a,b"))])
    assert r.status_code == 201, r.text
    st = r.json()
    assert st["state"] == "done" and (st["files_total"], st["files_skipped"], st["files_failed"]) == (2, 2, 0)
    assert st["error"] == "the job holds no audio files (2 skipped as not audio)"
    assert st["created_at"].endswith("Z") and st["finished_at"].endswith("Z") and st["warning"] is None
    assert client.get(f"/v1/jobs/{st['id']}").json()["created_at"] == st["created_at"]


def test_an_archive_refused_whole_is_counted_apart_from_the_files(client, monkeypatch):
    """A refused archive has no member rows, so files_failed cannot show it: archives_failed does, and its
    reason is among the errors."""
    from shared.db import session_scope
    from shared.schema import Archive, ArchiveState

    _heartbeats(monkeypatch, [])
    job_id = _job_rows()
    before = client.get(f"/v1/jobs/{job_id}").json()
    assert before["archives_failed"] == 0
    with session_scope() as db:
        db.add(Archive(job_id=job_id, name="bomb.zip", path="", state=ArchiveState.failed,
                       error="archive refused: its members would expand past the limit"))
        db.add(Archive(job_id=job_id, name="calls.zip", path="", state=ArchiveState.done, members=3))
    st = client.get(f"/v1/jobs/{job_id}").json()
    assert (st["files_failed"], st["archives_failed"]) == (1, 1)
    assert {"name": "bomb.zip", "error": "archive refused: its members would expand past the limit"} in st["errors"]
    assert client.get(f"/v1/jobs/{job_id}/results").json()["job"]["archives_failed"] == 1


def test_status_says_random_weights_from_the_results_alone(client, monkeypatch):
    """A status read finds random-weight results with one EXISTS (no scan of every result of the job)."""
    from shared.db import session_scope
    from shared.schema import ModelVersion

    _heartbeats(monkeypatch, [])
    job_id = _job_rows()
    assert client.get(f"/v1/jobs/{job_id}").json()["random_weights"] is True
    with session_scope() as db:
        for m in db.query(ModelVersion):
            m.random_weights = False
    assert client.get(f"/v1/jobs/{job_id}").json()["random_weights"] is False
