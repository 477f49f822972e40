"""Metrics and redaction through the database, as the ending transaction computes them."""

import pytest
from sqlalchemy import func, select, update

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


def _segmented(db, job: Job, name: str, text: str) -> File:
    """A file whose one segment has its result stored but is still batched (the file not yet settled)."""
    f = File(job_id=job.id, name=name, path=f"/nowhere/{name}", state=FileState.segmented, duration_s=5.0,
             num_channels=1)
    db.add(f)
    db.flush()
    ch = Channel(file_id=f.id, index=0, label="customer")
    db.add(ch)
    db.flush()
    seg = Segment(job_id=job.id, file_id=f.id, channel_id=ch.id, start_ms=500, end_ms=4500,
                  state=SegmentState.batched)
    db.add(seg)
    db.flush()
    db.add(Result(segment_id=seg.id, job_id=job.id, text=text, language="en", emotion="NEUTRAL",
                  emotion2vec_label="neutral", emotion2vec_scores={"neutral": 1.0}))
    db.flush()
    return f


def _finish(db, f: File) -> list[str]:
    from shared import progress

    db.execute(update(Segment).where(Segment.file_id == f.id).values(state=SegmentState.done))
    return progress.settle(db, [f.job_id])


@pytest.mark.parametrize("redact", [True, False])
def test_a_file_gets_its_analytics_when_it_settles(db, redact):
    """The file's last result stored: in that transaction the file is done with its metrics and, for a redact
    job, its texts redacted, while the job and its other file still run."""
    job = Job(redact=redact, state=JobState.running)
    db.add(job)
    db.flush()
    first = _segmented(db, job, "a.wav", "my card is 4111 1111 1111 1111")
    second = _segmented(db, job, "b.wav", "call me on 555 123 4567")
    assert _finish(db, first) == []
    assert db.get(Job, job.id).state == JobState.running and db.get(File, second.id).state == FileState.segmented
    assert db.get(CallMetrics, first.id) is not None and db.get(CallMetrics, second.id) is None
    texts = dict(db.execute(select(Segment.file_id, Result.text).join(Result, Result.segment_id == Segment.id)).all())
    assert texts[first.id] == ("my card is [CARD]" if redact else "my card is 4111 1111 1111 1111")
    assert "555 123 4567" in texts[second.id], "an unsettled file keeps its text until it settles"
    assert db.scalar(select(func.count()).select_from(Redaction)) == (1 if redact else 0)
    assert _finish(db, second) == [job.id]
    assert db.get(Job, job.id).state == JobState.done and db.get(CallMetrics, second.id) is not None
    assert ("555" not in db.scalar(select(Result.text).where(Result.job_id == job.id, Result.text.like("call%"))))\
        is redact


def test_the_job_end_computes_what_a_failed_settle_left_out(db, monkeypatch, caplog):
    job = Job(redact=True, state=JobState.running)
    db.add(job)
    db.flush()
    f = _segmented(db, job, "a.wav", "my card is 4111 1111 1111 1111")
    calls = []
    real = store.m.call_metrics
    monkeypatch.setattr(store.m, "call_metrics", lambda *a, **k: (calls.append(1), 1 / 0 if len(calls) == 1 else
                                                                   real(*a, **k))[1])
    assert _finish(db, f) == [job.id]  # the settle's analytics failed; the job's ending ran them again
    assert "their job computes them again" in caplog.text and len(calls) == 2
    assert db.get(CallMetrics, f.id) is not None
    assert db.scalar(select(Result.text).where(Result.job_id == job.id)) == "my card is [CARD]"


def test_the_job_end_leaves_settled_files_alone(db, monkeypatch):
    job = Job(state=JobState.running)
    db.add(job)
    db.flush()
    first, second = _segmented(db, job, "a.wav", "hello"), _segmented(db, job, "b.wav", "bye")
    _finish(db, first)
    computed = []
    real = store._files
    monkeypatch.setattr(store, "_files", lambda db, files: (computed.extend(f[0] for f in files), real(db, files))[1])
    assert _finish(db, second) == [job.id]
    assert computed == [second.id], "the job's end recomputes nothing that settled with its metrics"


def test_settled_redaction_uses_the_stored_word_timings(db):
    """Words as the GPU worker stores them ({"w", "start_s", "end_s"}): the span gets the words' times, the words
    are redacted with the text, and the words count feeds the talk speed."""
    job = Job(redact=True, state=JobState.running)
    db.add(job)
    db.flush()
    f = _segmented(db, job, "a.wav", "my card is 4111111111111111")
    words = [{"w": "my", "start_s": 0.6, "end_s": 0.8}, {"w": "card", "start_s": 0.9, "end_s": 1.2},
             {"w": "is", "start_s": 1.3, "end_s": 1.4}, {"w": "4111111111111111", "start_s": 1.5, "end_s": 3.9}]
    db.execute(update(Result).where(Result.job_id == job.id).values(words=words))
    assert _finish(db, f) == [job.id]
    text, stored = db.execute(select(Result.text, Result.words).where(Result.job_id == job.id)).one()
    assert text == "my card is [CARD]"
    assert [w["w"] for w in stored] == ["my", "card", "is", "[CARD]"]
    assert db.execute(select(Redaction.start_ms, Redaction.end_ms, Redaction.timing)).all() == [(1500, 3900, "words")]
    (channel,) = db.get(CallMetrics, f.id).metrics["channels"]
    assert channel["words"] == 4 and channel["words_source"] == "word_timings"
