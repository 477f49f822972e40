"""The job option `word_timings`: stored on the job at submission (default SPEECHQ_WORD_TIMINGS), and read by
the GPU task when it claims a batch, per segment, for a batch holding segments of several jobs."""

import pytest

from shared.config import get_settings
from shared.schema import Batch, Channel, File, FileState, Job, JobState, Segment, SegmentState


@pytest.mark.parametrize("default", [False, True])
def test_the_job_stores_its_choice_or_the_default(db, monkeypatch, default):
    from api.submit import create_job

    monkeypatch.setenv("SPEECHQ_WORD_TIMINGS", str(default).lower())
    get_settings.cache_clear()
    settings = get_settings()
    for asked, stored in ((None, default), (True, True), (False, False)):
        job, _, _ = create_job(db, settings, [], word_timings=asked)
        db.flush()
        assert db.get(Job, job.id).word_timings is stored, (asked, default)


def _segments(db, job: Job, batch: Batch, n: int) -> list[str]:
    f = File(job_id=job.id, name=f"{job.id}.wav", path="/nowhere", state=FileState.segmented)
    db.add(f)
    db.flush()
    ch = Channel(file_id=f.id, index=0, label="agent")
    db.add(ch)
    db.flush()
    segs = [Segment(job_id=job.id, file_id=f.id, channel_id=ch.id, start_ms=1000 * i, end_ms=1000 * i + 900,
                    state=SegmentState.batched, batch_id=batch.id) for i in range(n)]
    db.add_all(segs)
    db.flush()
    return [s.id for s in segs]


def test_claiming_a_batch_names_the_segments_to_time(db):
    from workers.gpu.tasks import claim_batch

    batch = Batch(path="/nowhere/batch.npz", num_segments=5, audio_seconds=4.5, padded_seconds=4.5)
    db.add(batch)
    timed, untimed = Job(word_timings=True, state=JobState.running), Job(word_timings=False, state=JobState.running)
    db.add_all([timed, untimed])
    db.flush()
    asked = _segments(db, timed, batch, 3)
    _segments(db, untimed, batch, 2)
    db.commit()
    claimed = claim_batch(batch.id, "worker-1")
    assert claimed is not None
    got, segments = claimed
    assert got.id == batch.id and segments == set(asked)
    assert claim_batch(batch.id, "worker-2") is None, "a running batch is not claimed twice"
