"""Call metrics, the conversation and redaction through the real stack, on a synthesised call whose truth is
known (shared.samples.placed_call): a barge-in, then a silence.

FSMN-VAD cuts its own boundaries (it pads speech and may split an utterance at a pause), so times are compared
within TOLERANCE_S of the truth; counts (interruptions, silences) exactly.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf

from shared import samples
from tests.conftest import need_espeak

pytestmark = pytest.mark.e2e
TOLERANCE_S = 0.6
PLACEMENTS = [
    (0, 0.5, "Thank you for calling Acme support, how can I help you today?"),
    (1, 3.0, "Hi, my internet keeps dropping every evening."),  # the customer barges in before the agent ends
    (0, 10.0, "Let me check your line."),  # after a silence of about four seconds
]


@pytest.fixture(scope="module")
def call(api):
    need_espeak()
    audio, truth = samples.placed_call(PLACEMENTS, rate=8000)
    path = samples.write(api.imports / "barge-in.wav", audio, 8000, codec="pcm_mulaw")
    r = api.http.post("/v1/jobs/paths", json={"paths": [path.name], "redact": True})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["redact"] is True
    st = api.wait(job["id"])
    assert st["state"] == "done", st
    return job["id"], api.results(job["id"]), truth, audio.shape[1] / 8000


def test_metrics_match_the_truth(call):
    _, results, truth, duration = call
    (agent_a, agent_b), customer = [t for t in truth if t[0] == 0], next(t for t in truth if t[0] == 1)
    m = results["files"][0]["metrics"]
    assert m is not None and m["duration_s"] == pytest.approx(duration, abs=0.05)
    talk = {c["label"]: c for c in m["channels"]}
    assert talk["agent"]["talk_s"] == pytest.approx((agent_a[2] - agent_a[1]) + (agent_b[2] - agent_b[1]),
                                                    abs=2 * TOLERANCE_S)
    assert talk["customer"]["talk_s"] == pytest.approx(customer[2] - customer[1], abs=TOLERANCE_S)
    # the barge-in: the customer talked over the agent, once, for as long as both spoke
    assert m["interruptions"] == 1
    assert talk["customer"]["interruptions_made"] == 1 and talk["agent"]["interrupted"] == 1
    assert m["interruption_s"] == pytest.approx(agent_a[2] - customer[1], abs=TOLERANCE_S)
    # one silence above the 3 s threshold: from the customer's end to the agent's answer
    assert m["silences"] == 1
    assert m["longest_silence_s"] == pytest.approx(agent_b[1] - customer[2], abs=TOLERANCE_S)
    assert m["non_talk_s"] == pytest.approx(duration - m["talk_s"], abs=0.01)
    for c in m["channels"]:
        assert c["loudness_lufs"] is not None and -60 < c["loudness_lufs"] < 0
        assert c["words_source"] in ("text", "word_timings")
    segments = [s for ch in results["files"][0]["channels"] for s in ch["segments"]]
    assert all(s["rms_dbfs"] is not None for s in segments)


def test_conversation_marks_who_talked_over_whom(call, api):
    job_id, results, truth, _ = call
    file_id = results["files"][0]["id"]
    r = api.http.get(f"/v1/jobs/{job_id}/files/{file_id}/conversation")
    assert r.status_code == 200, r.text
    conv = r.json()
    assert [t["channel"] for t in conv["turns"]][:2] == ["agent", "customer"]
    assert conv["turns"][-1]["channel"] == "agent"
    barge = [o for o in conv["overlaps"] if o["by"] == "customer" and o["over"] == "agent"]
    assert len(barge) == 1 and barge[0]["start_s"] == pytest.approx(truth[1][1], abs=TOLERANCE_S)
    assert conv["metrics"]["interruptions"] == 1


def test_redacted_audio_of_a_kept_recording(call, api):
    job_id, results, _, duration = call
    f = results["files"][0]
    r = api.http.get(f"/v1/jobs/{job_id}/files/{f['id']}/audio", params={"redacted": "true", "fill": "silence"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
    audio, rate = sf.read(io.BytesIO(r.content))
    assert rate == 8000 and audio.shape[1] == 2 and audio.shape[0] / rate == pytest.approx(duration, abs=0.01)
    assert np.abs(audio).max() > 0.01  # the speech outside the redacted spans is kept


def test_upload_opts_in_with_a_form_field_and_its_audio_leaves_with_the_job(call, api):
    job = api.submit([api.imports / "barge-in.wav"], redact="true")
    assert job["redact"] is True
    assert api.wait(job["id"])["state"] == "done"
    f = api.results(job["id"])["files"][0]
    assert f["metrics"]["interruptions"] == 1
    deadline = time.monotonic() + 10  # the spool is cleaned just after the ending transaction commits
    while True:
        r = api.http.get(f"/v1/jobs/{job['id']}/files/{f['id']}/audio", params={"redacted": "true"})
        if r.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 409 and "no longer kept" in r.json()["detail"]


def test_a_redact_jobs_file_is_redacted_and_measured_as_it_settles(call, api):
    """A redact job of a short call and a long one: while the job still runs, the short call, once done, already
    has its metrics stored and its texts redacted in the database (nothing raw is left for the job's end)."""
    from sqlalchemy import create_engine, func, select

    from shared.analytics import redaction
    from shared.schema import CallMetrics, File, FileState, Job, JobState, Result, Segment

    audio, rate = sf.read(api.imports / "barge-in.wav", dtype="float32", always_2d=True)
    samples.write(api.imports / "long-call.wav", np.tile(audio.T, (1, 16)), rate)  # about 3.5 minutes
    r = api.http.post("/v1/jobs/paths", json={"paths": ["barge-in.wav", "long-call.wav"], "redact": True,
                                              "word_timings": True})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    engine = create_engine(api.database_url)
    seen = None
    deadline = time.monotonic() + 240
    try:
        while seen is None and time.monotonic() < deadline:
            with engine.connect() as conn, conn.begin():  # one snapshot: the job's state and its files' rows
                state = conn.scalar(select(Job.state).where(Job.id == job_id))
                if state not in (JobState.queued, JobState.running):
                    break
                done = conn.scalars(select(File.id).where(File.job_id == job_id, File.state == FileState.done)).all()
                if done:
                    measured = conn.scalar(select(func.count()).select_from(CallMetrics)
                                           .where(CallMetrics.file_id.in_(done)))
                    stored = conn.execute(select(Result.text, Result.words).join(Segment, Segment.id == Result.segment_id)
                                          .where(Segment.file_id.in_(done))).all()
                    seen = (done, measured, stored)
            api.stack.supervise_once()
            time.sleep(0.1)
    finally:
        engine.dispose()
    assert seen is not None, f"no file of job {job_id} was seen done while the job ran (state {state})"
    done, measured, stored = seen
    assert measured == len(done), "a settled file has its metrics before the job ends"
    assert stored, "the settled file has results"
    for text, words in stored:  # nothing left to redact in what is stored, words included
        assert redaction.redact(text)[0] == text
        assert all(redaction.redact(w["w"])[0] == w["w"] for w in words or [])
    assert api.wait(job_id)["state"] == "done"
