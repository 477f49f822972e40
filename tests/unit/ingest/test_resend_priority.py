"""Work sent again (a retry, a split group, a reminder, a batch) goes at its job's position, not at the front
of the queue (issue 14): a huge job's retries do not overtake a new job's first files."""

from unittest import mock

from shared import tasks
from shared.schema import Batch, Channel, File, FileState, Job, Segment, SegmentState


def _job(session_scope, ended: int, *file_states: tuple[int, FileState]) -> tuple[str, list[str]]:
    """A job with `ended` files ended (done) and files of the given (attempts, state)."""
    with session_scope() as db:
        job = Job(files_total=ended + len(file_states), files_done=ended)
        db.add(job)
        db.flush()
        rows = [File(job_id=job.id, name=f"call{i}.wav", path=f"/x/{job.id}/{i}", attempts=a, state=s)
                for i, (a, s) in enumerate(file_states)]
        db.add_all(rows)
        db.flush()
        return job.id, [r.id for r in rows]


def priorities(send: mock.Mock) -> list[int]:
    return [c.kwargs["priority"] for c in send.call_args_list]


def test_positions_count_the_files_a_job_has_ended(db_scope):
    far, _ = _job(db_scope, 5000)
    new, _ = _job(db_scope, 0)
    with db_scope() as session:
        assert tasks.positions(session, [far, new, far]) == {far: 5000, new: 0}


def test_a_retried_file_goes_at_its_jobs_position(db_scope):
    from workers.ingest import retries

    _, (fid,) = _job(db_scope, 5000, (1, FileState.ingesting))
    with mock.patch.object(tasks.app, "send_task") as send:
        retries.again_alone(fid, OSError("disk"))
    assert priorities(send) == [tasks.priority(5000)] == [6]


def test_a_split_group_goes_at_its_jobs_position(db_scope):
    from workers.ingest import retries

    _, ids = _job(db_scope, 20, (1, FileState.ingesting), (0, FileState.queued))
    with mock.patch.object(tasks.app, "send_task") as send:
        assert retries.split(ids)
    assert priorities(send) == [tasks.priority(20)] * 2 == [2, 2]


def test_a_batch_goes_at_the_position_of_its_least_advanced_job(db_scope):
    from workers.ingest import batching

    far, (far_file,) = _job(db_scope, 300, (1, FileState.segmented))
    new, (new_file,) = _job(db_scope, 1, (1, FileState.segmented))
    with db_scope() as session:
        mixed, alone = (Batch(path="x", num_segments=2, audio_seconds=2.0, padded_seconds=2.0),
                         Batch(path="y", num_segments=1, audio_seconds=1.0, padded_seconds=1.0))
        session.add_all([mixed, alone])
        session.flush()
        for i, (job_id, file_id, batch) in enumerate(((far, far_file, mixed), (new, new_file, mixed),
                                                      (far, far_file, alone))):
            channel = Channel(file_id=file_id, index=i, label=f"ch{i}")
            session.add(channel)
            session.flush()
            session.add(Segment(job_id=job_id, file_id=file_id, channel_id=channel.id, start_ms=0, end_ms=1000,
                                state=SegmentState.batched, batch_id=batch.id))
        session.flush()
        at = batching.positions(session, [mixed.id, alone.id])
        assert at == {mixed.id: 1, alone.id: 300}
    with mock.patch.object(tasks.app, "send_task") as send:
        for batch_id, position in at.items():
            tasks.send_batch(batch_id, position=position)
    assert sorted(priorities(send)) == [0, 4]
    assert all(c.kwargs["queue"] == "gpu" for c in send.call_args_list)
