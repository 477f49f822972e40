"""A job's first segments go to the GPU at once (issue 16: the first batch within seconds of submission);
later partial batches wait for more segments, as before."""

import contextlib
from unittest import mock

from shared.schema import Channel, File, FileState, Job, JobState, Segment, SegmentState


def _job(session, ended: int) -> str:
    """A running job with `ended` files done, one file still ingesting and one segmented with two short
    pending segments (far less than a batch)."""
    job = Job(state=JobState.running, files_total=ended + 2, files_done=ended)
    session.add(job)
    session.flush()
    busy = File(job_id=job.id, name="busy.wav", path="/x/busy", state=FileState.ingesting)
    cut = File(job_id=job.id, name="cut.wav", path="/x/cut", state=FileState.segmented)
    session.add_all([busy, cut])
    session.flush()
    channel = Channel(file_id=cut.id, index=0, label="agent")
    session.add(channel)
    session.flush()
    session.add_all(Segment(job_id=job.id, file_id=cut.id, channel_id=channel.id, start_ms=s, end_ms=s + 2000)
                    for s in (0, 5000))
    return job.id


def _cut(db_scope) -> dict[str, int]:
    """Run one batching pass; the number of segments cut into batches, by job."""
    from workers.ingest import batching

    cut: dict[str, int] = {}

    def make(segment_ids):
        with db_scope() as session:
            for job_id in session.query(Segment.job_id).filter(Segment.id.in_(segment_ids)):
                cut[job_id[0]] = cut.get(job_id[0], 0) + 1
            session.query(Segment).filter(Segment.id.in_(segment_ids)).update({Segment.state: SegmentState.batched})
        return "batch"

    with mock.patch.object(batching, "_lock", contextlib.nullcontext), \
            mock.patch.object(batching, "_make_batch", side_effect=make), \
            mock.patch.object(batching.tasks, "send_batch"):
        batching.batch_pending()
    return cut


def test_a_starting_jobs_segments_do_not_wait_for_a_full_batch(db_scope):
    with db_scope() as session:
        new = _job(session, ended=0)
    assert _cut(db_scope) == {new: 2}


def test_a_job_under_way_lets_a_partial_batch_wait_for_more(db_scope):
    with db_scope() as session:
        old = _job(session, ended=3)
    assert _cut(db_scope) == {}
    with db_scope() as session:  # nothing left to ingest: the partial batch goes
        session.query(File).filter(File.job_id == old, File.state == FileState.ingesting).update(
            {File.state: FileState.done})
    assert _cut(db_scope) == {old: 2}


def test_only_the_starting_jobs_segments_skip_the_wait(db_scope):
    with db_scope() as session:
        _job(session, ended=3)
        new = _job(session, ended=0)
    assert _cut(db_scope) == {new: 2}
    assert _cut(db_scope) == {}  # the job under way still waits
