"""What a job hands over, through the real stack: the signed webhook (its first attempt refused), the export
of its rows, and /metrics."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import samples, webhooks
from tests.conftest import need_espeak
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e
SECRET = "e2e-webhook-secret"  # tests/e2e/conftest.py sets it for the stack


def test_webhook_export_and_metrics(api, tmp_path):
    need_espeak()
    receiver = Receiver([500])  # the first attempt fails: the reconciler retries after the backoff
    try:
        call = samples.stereo_g711_call(tmp_path / "call.wav")
        job = api.submit([call], name="handover", callback_url=receiver.url, word_timings="true")
        assert job["word_timings"] is True
        st = api.wait(job["id"])
        assert st["state"] == "done", st
        deadline = time.monotonic() + 90
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            api.stack.supervise_once()
            time.sleep(0.5)
    finally:
        receiver.close()
    assert len(receiver.requests) == 2, receiver.requests
    (first_h, first_body), (headers, body) = receiver.requests
    assert first_h[webhooks.HEADER_DELIVERY] == headers[webhooks.HEADER_DELIVERY] and first_body == body
    assert webhooks.verify(SECRET, headers, body)
    sent = json.loads(body)
    assert sent["job"]["id"] == job["id"] and sent["job"]["state"] == "done" and sent["job"]["files_done"] == 1

    results = api.results(job["id"])
    (f,) = results["files"]
    for c in f["channels"]:  # word timings, asked by the job: in seconds of the file, within their segment
        for s in c["segments"]:
            assert isinstance(s["words"], list), s
            assert all(s["start_s"] <= w["start_s"] <= w["end_s"] <= s["end_s"] + 0.06 for w in s["words"])
    assert any(c["segments"] for c in f["channels"])
    segments = sorted((c["label"], s["start_s"]) for c in f["channels"] for s in c["segments"])
    rows = [json.loads(x) for x in api.http.get(f"/v1/jobs/{job['id']}/export").text.splitlines()]
    assert sorted((r["channel"], r["start_s"]) for r in rows) == segments
    assert {r["channel"] for r in rows} == {"agent", "customer"}
    vtt = api.http.get(f"/v1/jobs/{job['id']}/export", params={"format": "vtt", "file_id": f["id"]}).text
    spoken = [(c["label"], s) for c in f["channels"] for s in c["segments"] if (s["text"] or "").strip()]
    assert vtt.startswith("WEBVTT") and vtt.count(" --> ") == len(spoken)  # random weights: some texts are empty
    assert all(f"<v {label}>" in vtt for label, _ in spoken)

    metrics = api.http.get("/metrics").text
    samples_ = {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(metrics) for s in fam.samples}
    assert samples_[("speechq_webhook_deliveries", (("state", "delivered"),))] >= 1
    assert samples_[("speechq_jobs", (("state", "done"),))] >= 1
    assert samples_[("speechq_batch_latency_seconds_count", ())] >= 1
    assert sum(v for (n, _), v in samples_.items() if n == "speechq_gpu_busy_seconds_total") > 0


def test_word_timings_are_a_job_option(api, tmp_path):
    """The stack's default (SPEECHQ_WORD_TIMINGS=true in tests/e2e/conftest.py) is overridden per job: a job that
    says no stores no words, in the API and in the database, while one that asks gets them."""
    from sqlalchemy import create_engine, select

    from shared.schema import Result

    need_espeak()
    call = samples.stereo_g711_call(tmp_path / "untimed.wav")
    without = api.submit([call], word_timings="false")
    timed = api.http.post("/v1/jobs/paths", json={"paths": [_imported(api, call).name], "word_timings": True})
    assert timed.status_code == 201, timed.text
    timed = timed.json()
    assert without["word_timings"] is False and timed["word_timings"] is True
    for job in (without, timed):
        assert api.wait(job["id"])["state"] == "done"
    engine = create_engine(api.database_url)
    try:
        with engine.connect() as conn:
            stored = {job["id"]: conn.scalars(select(Result.words).where(Result.job_id == job["id"])).all()
                      for job in (without, timed)}
    finally:
        engine.dispose()
    assert stored[without["id"]] and all(w is None for w in stored[without["id"]]), "a job without timings stores none"
    assert stored[timed["id"]] and all(isinstance(w, list) for w in stored[timed["id"]]), \
        "a job with word timings stores them on every result"
    segments = [s for f in api.results(without["id"])["files"] for c in f["channels"] for s in c["segments"]]
    assert segments and all(s["words"] is None for s in segments)
    segments = [s for f in api.results(timed["id"])["files"] for c in f["channels"] for s in c["segments"]]
    assert segments and all(isinstance(s["words"], list) for s in segments)


def _imported(api, path):
    """A copy of `path` under the stack's import root, for a submission by server-side path."""
    target = api.imports / path.name
    target.write_bytes(path.read_bytes())
    return target
