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
        job = api.submit([call], name="handover", callback_url=receiver.url)
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
