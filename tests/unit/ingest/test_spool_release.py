"""A channel's decoded audio leaves the spool once its last segment is batched (issue 16): a job holds on the
spool only what is not batched yet, so its spool budget bounds the audio in flight, not the job's length."""

import contextlib
from unittest import mock

import numpy as np

from shared.config import get_settings
from shared.schema import Batch, Channel, File, FileState, Job, JobState, Segment, SegmentState
from shared.storage import SAMPLE_RATE, Spool, read_batch


def _channel(session, spool: Spool, job: Job, name: str, spans_ms: list[tuple[int, int]]) -> tuple[str, object]:
    """A segmented file of one channel whose decoded audio is on the spool, with pending segments."""
    f = File(job_id=job.id, name=name, path=f"/x/{name}", state=FileState.segmented)
    session.add(f)
    session.flush()
    path = spool.channel_audio(job.id, f"{f.id}-0")
    audio = np.arange(10 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE  # a ramp: each sample names its time
    audio.tofile(path)
    channel = Channel(file_id=f.id, index=0, label="agent", audio_path=str(path))
    session.add(channel)
    session.flush()
    session.add_all(Segment(job_id=job.id, file_id=f.id, channel_id=channel.id, start_ms=s, end_ms=e)
                    for s, e in spans_ms)
    return channel.id, path


def _job(session) -> Job:
    job = Job(state=JobState.running, files_total=2)
    session.add(job)
    session.flush()
    return job


def _batch(session, batch_id: str) -> str:
    session.add(Batch(id=batch_id, path=f"/x/{batch_id}.npz", num_segments=1, audio_seconds=1.0, padded_seconds=1.0))
    session.flush()
    return batch_id


def _pass():
    from workers.ingest import batching

    with mock.patch.object(batching, "_lock", contextlib.nullcontext), \
            mock.patch.object(batching.tasks, "send_batch"):
        return batching.batch_pending(force_flush=True)


def test_a_channel_leaves_the_spool_when_its_last_segment_is_batched(db_scope):
    spool = Spool(get_settings().spool)
    with db_scope() as session:
        job = _job(session)
        _, done_path = _channel(session, spool, job, "a.wav", [(0, 2000), (4000, 5000)])
        held_id, held_path = _channel(session, spool, job, "b.wav", [(1000, 3000), (6000, 9000)])
    with db_scope() as session:  # b's first segment went in an earlier batch; its second is still pending
        _batch(session, "earlier")
        session.query(Segment).filter(Segment.channel_id == held_id, Segment.start_ms == 1000).update(
            {Segment.state: SegmentState.batched, Segment.batch_id: "earlier"})
    created = _pass()
    assert len(created) == 1
    assert not done_path.exists()  # both of a's segments are in this batch
    assert not held_path.exists()  # b's last pending segment is in it too

    with db_scope() as session:
        batch = read_batch(spool.batch(created[0]))
        ids = [str(x) for x in batch["segment_ids"]]
        starts = {s.id: s.start_ms for s in session.query(Segment).filter(Segment.id.in_(ids))}
    # the batch holds its segments' own audio: the channel files are not needed to run it
    for i, sid in enumerate(ids):
        piece = batch["audio"][batch["offsets"][i]:batch["offsets"][i + 1]]
        assert abs(piece[0] - starts[sid] / 1000) < 1e-3


def test_a_channel_with_a_pending_segment_stays(db_scope):
    spool = Spool(get_settings().spool)
    with db_scope() as session:
        channel_id, path = _channel(session, spool, _job(session), "a.wav", [(0, 2000), (4000, 5000)])
    from workers.ingest import batching

    with db_scope() as session:  # one segment batched elsewhere, one still pending
        _batch(session, "other")
        first = session.query(Segment).filter(Segment.channel_id == channel_id, Segment.start_ms == 0).one()
        first.state, first.batch_id = SegmentState.batched, "other"
    assert batching.release_channels(["other"]) == 0
    assert path.exists()
    with db_scope() as session:
        session.query(Segment).filter(Segment.channel_id == channel_id).update(
            {Segment.state: SegmentState.batched, Segment.batch_id: "other"})
    assert batching.release_channels(["other"]) == 1
    assert not path.exists()
