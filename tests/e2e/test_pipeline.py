"""Over HTTP, through Redis, real ingest and gpu-queue workers, into SQLite and PostgreSQL."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from datetime import timedelta

import numpy as np
import pytest
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from shared import samples
from shared.schema import File, Job, Result, Segment, utcnow
from tests.conftest import need_espeak, shared_audio

pytestmark = pytest.mark.e2e


def _rows(database_url: str, job_id: str) -> tuple[int, int]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        segs = conn.scalar(select(func.count()).select_from(Segment).where(Segment.job_id == job_id))
        res = conn.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
    engine.dispose()
    return segs, res


def _check_complete(api, job_id: str) -> dict:
    res = api.results(job_id)
    assert res["warning"] and "RANDOM" in res["warning"]
    assert res["job"]["random_weights"] is True
    assert {m["name"] for m in res["models"]} == {"iic/SenseVoiceSmall", "iic/emotion2vec_plus_large"}
    for key in ("created_at", "started_at", "finished_at"):  # UTC, said so, on SQLite and PostgreSQL alike
        assert res["job"][key].endswith("Z"), res["job"][key]
    ids = set()
    for f in res["files"]:
        if f["state"] != "done" or f["duplicate_of"]:
            continue
        for c in f["channels"]:
            for s in c["segments"]:
                assert s["state"] == "done"
                assert isinstance(s["text"], str)
                assert 0 <= s["start_s"] < s["end_s"] <= c["duration_s"] + 0.01
                assert "<unk>" not in s["emotion2vec_scores"] and len(s["emotion2vec_scores"]) == 9
                assert s["emotion2vec_label"] in s["emotion2vec_scores"]
                assert abs(sum(s["emotion2vec_scores"].values()) - 1.0) < 1e-3
                # word timings (on by default), in seconds of the file, within the segment and its last frame
                assert isinstance(s["words"], list)
                assert all(s["start_s"] <= w["start_s"] <= w["end_s"] <= s["end_s"] + 0.06 for w in s["words"])
                ids.add(s["id"])
    assert ids == {s["id"] for f in api.results(job_id)["files"] if f["state"] == "done" and not f["duplicate_of"]
                   for c in f["channels"] for s in c["segments"]}, "segment ids are stable"
    segs, results = _rows(api.database_url, job_id)
    assert segs == results > 0, "every segment has exactly one result row"
    return res


def test_health(api):
    r = api.http.get("/v1/health")
    assert r.status_code == 200 and (r.json()["database"], r.json()["broker"]) == ("ok", "ok")


def test_new_job_is_flagged_random_before_its_first_result(api, tmp_path):
    """The live GPU workers' heartbeats say their models are random: a job says so from the moment it exists."""
    from shared import heartbeat

    deadline = time.monotonic() + 180
    while not any(w["role"] == "gpu" and w["state"] == "ready" and w["models"]
                  for w in heartbeat.alive(api.stack.settings)):
        assert time.monotonic() < deadline, f"no ready GPU worker: {heartbeat.alive(api.stack.settings)}"
        time.sleep(0.5)
    silent = samples.write(tmp_path / "silent.wav", np.zeros((1, 8000), dtype=np.float32), 8000)
    job = api.submit([silent])
    assert job["state"] in ("queued", "running") and job["random_weights"] is True and job["warning"] is None, job
    st = api.wait(job["id"])
    assert st["state"] == "done" and st["random_weights"] is False, "no result came from any model"


def test_stereo_call_one_speaker_per_channel(api, tmp_path):
    need_espeak()
    call = samples.stereo_g711_call(tmp_path / "call.wav")
    job = api.submit([call], channel_labels="agent,customer")
    st = api.wait(job["id"])
    assert st["state"] == "done" and st["files_done"] == 1 and st["files_failed"] == 0
    assert st["audio_done_s"] == pytest.approx(st["audio_total_s"]) and st["audio_total_s"] > 15
    res = _check_complete(api, job["id"])
    (f,) = res["files"]
    assert f["num_channels"] == 2 and f["sample_rate"] == 8000 and "pcm_mulaw" in f["format"]
    agent, customer = f["channels"]
    assert (agent["label"], customer["label"]) == ("agent", "customer")
    # The synthetic call has 3 agent turns (left) and 2 customer turns (right), never overlapping.
    assert len(agent["segments"]) == 3 and len(customer["segments"]) == 2
    spans = sorted([(s["start_s"], s["end_s"], "a") for s in agent["segments"]]
                   + [(s["start_s"], s["end_s"], "c") for s in customer["segments"]])
    assert [who for *_, who in spans] == ["a", "c", "a", "c", "a"]


def test_real_stereo_recording(api):
    path = shared_audio("stereo_two_speakers.wav")
    job = api.submit([path])
    assert api.wait(job["id"])["state"] == "done"
    (f,) = _check_complete(api, job["id"])["files"]
    assert [c["label"] for c in f["channels"]] == ["agent", "customer"]
    assert all(c["segments"] for c in f["channels"]), "each speaker's channel has its own speech"


def test_zip_of_calls_with_bad_members(api, tmp_path):
    need_espeak()
    good = [samples.mono_call(tmp_path / f"c{i}.wav", [(i % 2, f"Call number {i}, thank you for waiting.")],
                              rate=8000 if i else 16000) for i in range(3)]
    silent = samples.write(tmp_path / "silent.wav", np.zeros((1, 16000 * 3), dtype=np.float32), 16000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in good:
            zf.write(p, f"day1/{p.name}")
        zf.write(silent, "day1/silent.wav")
        zf.writestr("day1/empty.wav", b"")
        zf.writestr("day1/garbage.wav", np.random.default_rng(0).bytes(5000))
        zf.writestr("../escape.wav", good[0].read_bytes())
        zf.writestr("day1/notes.txt", "Call 0001, agent Smith, customer 4711, resolved\n" * 40)
        zf.writestr("day1/index.csv", "file,agent\nc0.wav,Smith\n")
    archive = tmp_path / "calls.zip"
    archive.write_bytes(buf.getvalue())
    job = api.submit([archive])
    assert job["created_at"].endswith("Z")
    st = api.wait(job["id"])
    assert st["state"] == "done"
    assert st["files_total"] == 9 and st["files_done"] == 4 and st["files_failed"] == 3 and st["files_skipped"] == 2
    errors = {e["name"]: e["error"] for e in st["errors"]}
    assert "empty" in errors["calls.zip/day1/empty.wav"]
    assert "not a readable audio file" in errors["calls.zip/day1/garbage.wav"]
    assert "unsafe member path" in errors["calls.zip/../escape.wav"]
    assert errors["calls.zip/day1/silent.wav"] == "no speech detected in any channel"
    assert {s["name"]: s["reason"] for s in st["skipped"]} == {
        "calls.zip/day1/notes.txt": "sidecar file (.txt), not audio",
        "calls.zip/day1/index.csv": "sidecar file (.csv), not audio"}
    res = _check_complete(api, job["id"])
    by_name = {f["name"]: f for f in res["files"]}
    assert by_name["calls.zip/day1/notes.txt"]["state"] == "skipped"
    spool = str(api.stack.settings.spool)
    assert spool not in api.http.get(f"/v1/jobs/{job['id']}").text
    assert spool not in api.http.get(f"/v1/jobs/{job['id']}/results").text
    for p in good:
        f = by_name[f"calls.zip/day1/{p.name}"]
        assert f["state"] == "done" and f["channels"][0]["segments"], f


def test_telephone_8k_recordings(api, tmp_path):
    paths = [shared_audio("ivr-queue-periodic-announce.wav"), shared_audio("ivr-agent-alreadyon.wav")]
    job = api.submit(paths)
    assert api.wait(job["id"])["state"] == "done"
    res = _check_complete(api, job["id"])
    for f in res["files"]:
        assert f["sample_rate"] == 8000 and f["num_channels"] == 1
        assert f["channels"][0]["segments"]


def test_server_side_paths_and_refusals(api, tmp_path):
    need_espeak()
    inside = samples.mono_call(api.imports / "inside.wav", [(0, "Hello from the archive server.")])
    outside = samples.mono_call(tmp_path / "outside.wav", [(0, "Not for you.")])
    r = api.http.post("/v1/jobs/paths", json={"paths": [str(outside)]})
    assert r.status_code == 422 and "outside the import root" in r.text
    r = api.http.post("/v1/jobs/paths", json={"paths": ["../" + outside.name]})
    assert r.status_code == 422
    r = api.http.post("/v1/jobs/paths", json={"paths": [inside.name], "language": "en"})
    assert r.status_code == 201, r.text
    assert api.wait(r.json()["id"])["state"] == "done"


def test_vad_example_segments_in_pipeline(api):
    path = shared_audio("vad_example.wav")
    job = api.submit([path])
    assert api.wait(job["id"])["state"] == "done"
    (f,) = api.results(job["id"])["files"]
    got = [[round(s["start_s"] * 1000), round(s["end_s"] * 1000)] for s in f["channels"][0]["segments"]]
    assert got == [[70, 2340], [2620, 6200], [6480, 23670], [23950, 26250], [26780, 28990], [29950, 31430],
                   [31750, 37600], [38210, 46900], [47310, 49630], [49910, 56460], [56740, 59540],
                   [59820, 70450]]


def test_cancel(api, tmp_path):
    need_espeak()
    call = samples.mono_call(tmp_path / "c.wav", [(0, "Please cancel me.")])
    job = api.submit([call])
    r = api.http.post(f"/v1/jobs/{job['id']}/cancel")
    if r.status_code == 409:  # it already finished: nothing left to cancel
        assert "already done" in r.text
        return
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert api.wait(job["id"])["state"] == "cancelled"
    assert api.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_duplicates_processed_once_and_nested_archives(api, tmp_path):
    need_espeak()
    a = samples.mono_call(tmp_path / "a.wav", [(0, "The same recording, filed twice.")]).read_bytes()
    b = samples.mono_call(tmp_path / "b.wav", [(1, "A call inside an inner archive.")], rate=8000).read_bytes()
    too_deep = _zip({"level2.zip": _zip({"level3.zip": _zip({"deep.wav": b})})})
    outer = _zip({"monday/a.wav": a, "tuesday/a-again.wav": a, "inner.zip": _zip({"b.wav": b}),
                  "nest.zip": too_deep})
    (tmp_path / "outer.zip").write_bytes(outer)
    job = api.submit([tmp_path / "outer.zip"])
    st = api.wait(job["id"])
    assert st["state"] == "done", st
    res = api.results(job["id"])
    files = {f["name"]: f for f in res["files"]}
    first, again = files["outer.zip/monday/a.wav"], files["outer.zip/tuesday/a-again.wav"]
    assert first["state"] == again["state"] == "done" and first["sha256"] == again["sha256"]
    assert again["duplicate_of"] == "outer.zip/monday/a.wav"
    assert again["channels"] == first["channels"] and first["channels"][0]["segments"]
    segs, _ = _rows(api.database_url, job["id"])
    inner = files["outer.zip/inner.zip/b.wav"]
    assert segs == len(first["channels"][0]["segments"]) + len(inner["channels"][0]["segments"])
    assert files["outer.zip/inner.zip/b.wav"]["state"] == "done"
    deep = files["outer.zip/nest.zip/level2.zip/level3.zip"]
    assert deep["state"] == "failed" and "nested deeper than 2" in deep["error"]


class Events:
    """Celery's monitoring events as Flower receives them, captured on the test broker."""

    def __init__(self, broker: str):
        from celery import Celery

        self.app = Celery(broker=broker)
        self.seen: list[dict] = []
        self.connection = self.app.connection()
        self.receiver = self.app.events.Receiver(self.connection, handlers={"*": self.seen.append})
        self.thread = threading.Thread(target=self.receiver.capture, kwargs={"limit": None, "wakeup": True},
                                       daemon=True)

    def __enter__(self) -> Events:
        self.thread.start()
        self.wait(lambda: any(e["type"] == "worker-heartbeat" for e in self.seen), "a worker heartbeat")
        return self

    def __exit__(self, *_exc) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=10)
        self.connection.release()

    def wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, f"no {what} in {len(self.seen)} events"
            time.sleep(0.2)

    def of(self, uuid: str) -> list[str]:
        return [e["type"] for e in self.seen if e.get("uuid") == uuid]


def _lost_file(api, path) -> str:
    """A queued file whose message never reached the broker: only the reconciler will send it."""
    engine = create_engine(api.database_url)
    with Session(engine) as db:
        job = Job(name="lost", files_total=1)
        db.add(job)
        db.flush()
        db.add(File(job_id=job.id, name="lost/garbage.wav", path=str(path), size_bytes=path.stat().st_size,
                    updated_at=utcnow() - timedelta(hours=1)))
        db.commit()
        job_id = job.id
    engine.dispose()
    return job_id


def test_failed_files_end_their_tasks_failed_in_flower(api, tmp_path):
    """Flower counts what the events say: a task whose files failed ends FAILURE, its arguments name the job and
    the files, and its message is acked, not redelivered. The reconciler (every 5 s here) sends no events."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.wav", b"RIFF")
        zf.writestr("day2/garbage.wav", np.random.default_rng(3).bytes(5000))
        zf.writestr("day2/notes.txt", "agent Smith\n")
    (tmp_path / "day2.zip").write_bytes(buf.getvalue())
    (tmp_path / "lost.wav").write_bytes(np.random.default_rng(4).bytes(5000))
    with Events(api.stack.settings.broker) as events:
        job = api.submit([tmp_path / "day2.zip"])
        lost = _lost_file(api, tmp_path / "lost.wav")
        st = api.wait(job["id"])
        assert st["state"] == "failed" and (st["files_failed"], st["files_skipped"]) == (2, 1)
        assert api.wait(lost)["state"] == "failed", "the reconciler sent the lost file"
        received = {(e["name"], e["args"]): e for e in events.seen if e["type"] == "task-received"}
        expand = received["workers.ingest.archives.expand_archive", f"job {job['id']}: day2.zip"]
        ingest = received["workers.ingest.files.ingest_files", f"job {job['id']}: day2.zip/day2/garbage.wav"]
        resent = received["workers.ingest.files.ingest_files", f"job {lost}: lost/garbage.wav"]
        for task in (expand, ingest, resent):
            events.wait(lambda: "task-failed" in events.of(task["uuid"]), f"task-failed for {task['name']}")
    failed = {e["uuid"]: e["exception"] for e in events.seen if e["type"] == "task-failed"}
    assert "1 of 3 file(s) failed: day2.zip/../escape.wav: unsafe member path" in failed[expand["uuid"]]
    assert "1 of 1 file(s) failed: day2.zip/day2/garbage.wav: not a readable" in failed[ingest["uuid"]]
    assert "1 of 1 file(s) failed: lost/garbage.wav: not a readable" in failed[resent["uuid"]]
    for task in (expand, ingest, resent):
        assert events.of(task["uuid"]).count("task-received") == 1 and "task-succeeded" not in events.of(task["uuid"])
    client = redis.Redis.from_url(api.stack.settings.broker)
    waiting = b"".join(client.hvals("unacked")) + b"".join(client.lrange("ingest", 0, -1))
    assert not [t for t in (expand, ingest, resent) if t["uuid"].encode() in waiting], "acked, not redelivered"
    quiet = [e for e in events.seen if e.get("name") == "workers.ingest.reconcile.reconcile"
             or e["type"] == "task-succeeded" and "'packed'" in e.get("result", "")]  # what reconcile returns
    assert not quiet, "housekeeping stays out of Flower"
