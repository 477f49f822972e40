"""Over HTTP, through Redis, real ingest and gpu-queue workers, into SQLite and PostgreSQL."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select

from shared import samples
from shared.schema import Result, Segment
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
    for f in res["files"]:
        if f["state"] != "done":
            continue
        for c in f["channels"]:
            for s in c["segments"]:
                assert s["state"] == "done"
                assert isinstance(s["text"], str)
                assert s["emotion2vec_label"] in s["emotion2vec_scores"]
                assert abs(sum(s["emotion2vec_scores"].values()) - 1.0) < 1e-3
    segs, results = _rows(api.database_url, job_id)
    assert segs == results > 0, "every segment has exactly one result row"
    return res


def test_health(api):
    r = api.http.get("/v1/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_stereo_call_one_speaker_per_channel(api, tmp_path):
    need_espeak()
    call = samples.stereo_g711_call(tmp_path / "call.wav")
    job = api.submit([call], channel_labels="agent,customer")
    st = api.wait(job["id"])
    assert st["state"] == "done" and st["files_done"] == 1 and st["files_failed"] == 0
    assert st["audio_seconds_done"] == pytest.approx(st["audio_seconds_total"]) and st["audio_seconds_total"] > 15
    res = _check_complete(api, job["id"])
    (f,) = res["files"]
    assert f["num_channels"] == 2 and f["sample_rate"] == 8000 and "pcm_mulaw" in f["format"]
    agent, customer = f["channels"]
    assert (agent["label"], customer["label"]) == ("agent", "customer")
    # The synthetic call has 3 agent turns (left) and 2 customer turns (right), never overlapping.
    assert len(agent["segments"]) == 3 and len(customer["segments"]) == 2
    spans = sorted([(s["start_ms"], s["end_ms"], "a") for s in agent["segments"]]
                   + [(s["start_ms"], s["end_ms"], "c") for s in customer["segments"]])
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
    archive = tmp_path / "calls.zip"
    archive.write_bytes(buf.getvalue())
    job = api.submit([archive])
    st = api.wait(job["id"])
    assert st["state"] == "done"
    assert st["files_total"] == 7 and st["files_done"] == 4 and st["files_failed"] == 3
    errors = {e["name"]: e["error"] for e in st["errors"]}
    assert "empty" in errors["calls.zip/day1/empty.wav"]
    assert "not a readable audio file" in errors["calls.zip/day1/garbage.wav"]
    assert "unsafe member path" in errors["calls.zip/../escape.wav"]
    assert errors["calls.zip/day1/silent.wav"] == "no speech detected in any channel"
    res = _check_complete(api, job["id"])
    by_name = {f["name"]: f for f in res["files"]}
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
    got = [[s["start_ms"], s["end_ms"]] for s in f["channels"][0]["segments"]]
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
    assert segs == len(first["channels"][0]["segments"]) + len(files["outer.zip/inner.zip/b.wav"]["channels"][0]["segments"])
    assert files["outer.zip/inner.zip/b.wav"]["state"] == "done"
    deep = files["outer.zip/nest.zip/level2.zip/level3.zip"]
    assert deep["state"] == "failed" and "nested deeper than 2" in deep["error"]
