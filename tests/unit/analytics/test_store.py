"""Metrics and redaction through the database, as the ending transaction computes them."""

import pytest
from sqlalchemy import select

from shared.analytics import flat_metrics, store
from shared.config import get_settings
from shared.schema import (CallMetrics, Channel, File, FileState, Job, JobState, Redaction, Result, Segment,
                           SegmentState)


@pytest.fixture
def db(tmp_path, monkeypatch):
    from shared.db import migrate, session_scope

    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SPEECHQ_SILENCE_THRESHOLD_SECONDS", "2")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    migrate()
    with session_scope() as session:
        yield session
    get_settings.cache_clear()


def _call(db, redact: bool) -> tuple[Job, File]:
    job = Job(redact=redact, state=JobState.done)
    db.add(job)
    db.flush()
    f = File(job_id=job.id, name="call.wav", path="/nowhere/call.wav", state=FileState.done, duration_s=20.0,
             num_channels=2)
    db.add(f)
    db.flush()
    agent = Channel(file_id=f.id, index=0, label="agent")
    customer = Channel(file_id=f.id, index=1, label="customer")
    db.add_all([agent, customer])
    db.flush()
    rows = [(agent, 1000, 4000, "how can I help", -20.0),
            (customer, 3500, 7000, "my card is 4111 1111 1111 1111", -25.0),
            (agent, 12000, 14000, "thank you", -20.0)]
    for ch, s, e, text, lufs in rows:
        seg = Segment(job_id=job.id, file_id=f.id, channel_id=ch.id, start_ms=s, end_ms=e, state=SegmentState.done,
                      loudness_lufs=lufs)
        db.add(seg)
        db.flush()
        db.add(Result(segment_id=seg.id, job_id=job.id, text=text, language="en", emotion="NEUTRAL",
                      emotion2vec_label="neutral", emotion2vec_scores={"neutral": 1.0}))
    db.flush()
    return job, f


def test_metrics_stored_per_done_file(db):
    job, f = _call(db, redact=False)
    store.compute(db, job)
    row = db.get(CallMetrics, f.id)
    assert row.metrics["talk_s"] == pytest.approx(8.0)  # 1-7 s and 12-14 s
    assert row.metrics["interruptions"] == 1 and row.metrics["interruption_s"] == pytest.approx(0.5)
    assert row.metrics["longest_silence_s"] == pytest.approx(5.0) and row.metrics["silence_threshold_s"] == 2.0
    assert [c["label"] for c in row.metrics["channels"]] == ["agent", "customer"]
    flat = flat_metrics(db, [f.id])[f.id]
    assert flat["channel.customer.interruptions_made"] == 1
    # without the opt-in nothing is changed
    assert "4111 1111 1111 1111" in db.scalar(select(Result.text).where(Result.text.like("my card%")))
    assert db.scalar(select(Redaction.id)) is None
    store.compute(db, job)  # a second run replaces, never duplicates
    assert len(db.scalars(select(CallMetrics)).all()) == 1


def test_redaction_replaces_text_and_stores_spans(db):
    job, f = _call(db, redact=True)
    store.compute(db, job)
    texts = set(db.scalars(select(Result.text)))
    assert "my card is [CARD]" in texts and not any("4111" in t for t in texts)
    spans = db.execute(select(Redaction.kind, Redaction.channel_index, Redaction.start_ms, Redaction.end_ms,
                              Redaction.timing)).all()
    assert spans == [("CARD", 1, 3500, 7000, "segment")]  # no word timings: the segment's span
    assert store.file_spans(db, f.id) == [(1, 3500, 7000, "CARD")]
    store.compute(db, job)
    assert len(db.scalars(select(Redaction)).all()) == 1


def test_spans_found_in_a_running_job(db):
    job, f = _call(db, redact=True)
    job.state = JobState.running
    assert store.file_spans(db, f.id) == [(1, 3500, 7000, "CARD")]


def test_api_shows_redacted_text_before_the_job_ends(db):
    from api.mapping import segment_out

    job, f = _call(db, redact=True)
    seg = db.scalars(select(Segment).where(Segment.start_ms == 3500)).one()
    assert segment_out(seg, redact=True).text == "my card is [CARD]"
    assert segment_out(seg, redact=False).text == "my card is 4111 1111 1111 1111"
    assert segment_out(seg).loudness_lufs == -25.0


def test_an_analytics_error_never_blocks_the_end_of_a_job(db, monkeypatch, caplog):
    job, f = _call(db, redact=False)
    monkeypatch.setattr(store.m, "call_metrics", lambda *a, **k: 1 / 0)
    store.compute(db, job)
    assert db.get(CallMetrics, f.id) is None and "the job ends without them" in caplog.text
    db.flush()  # the transaction goes on
    assert db.get(Job, job.id).state == JobState.done
