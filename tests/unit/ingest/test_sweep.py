"""Issue 13: the reconciler sweeps the spool of what ended jobs and batches left behind, never what is live."""

import os
import time

import pytest

from shared.config import get_settings
from shared.schema import Batch, BatchState, Job, JobState
from shared.storage import Spool


@pytest.fixture
def spool(db_scope):
    return Spool(get_settings().spool)


def _old(path, seconds):
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def test_sweep_removes_what_ended_and_keeps_what_runs(spool):
    from shared.db import session_scope
    from workers.ingest import sweep

    old = get_settings().task_deadline_seconds + 10
    with session_scope() as db:
        ended, running = Job(state=JobState.done), Job(state=JobState.running)
        done_batch = Batch(path="", num_segments=1, audio_seconds=1, padded_seconds=1, state=BatchState.done)
        live_batch = Batch(path="", num_segments=1, audio_seconds=1, padded_seconds=1, state=BatchState.running)
        db.add_all([ended, running, done_batch, live_batch])
        db.flush()
        ids = ended.id, running.id, done_batch.id, live_batch.id
    folders = {job: spool.channel_audio(job, "c-0").parent for job in (ids[0], ids[1], "nojob")}
    for folder in folders.values():
        _old(folder, old)
    files = {name: spool.batch(name).with_suffix(".f32") for name in (ids[2], ids[3], "unknown")}
    for f in files.values():
        f.write_bytes(b"x")
        _old(f, old)
    young = spool.batch("young")
    young.write_bytes(b"x")  # being written: its row is not committed yet
    assert sweep.sweep() == {"jobs": 2, "batch_files": 2}
    assert not folders[ids[0]].exists() and not folders["nojob"].exists() and folders[ids[1]].exists()
    assert not files[ids[2]].exists() and not files["unknown"].exists() and files[ids[3]].exists()
    assert young.exists()


def test_a_job_that_ends_leaves_the_spool_when_its_transaction_commits(spool):
    from shared import endings
    from shared.db import session_scope

    with session_scope() as db:
        job = Job(state=JobState.running)
        db.add(job)
        db.flush()
        job_id = job.id
    audio = spool.channel_audio(job_id, "c-0")
    audio.write_bytes(b"x")
    upload = spool.uploads(job_id) / "a.wav"
    upload.write_bytes(b"x")
    with pytest.raises(RuntimeError), session_scope() as db:
        endings.job_ended(db, db.get(Job, job_id))
        raise RuntimeError("the ending transaction rolls back")
    assert audio.exists() and upload.exists()  # nothing removed for a job that did not end
    with session_scope() as db:
        endings.job_ended(db, db.get(Job, job_id))
        assert audio.exists()  # not before the commit
    assert not audio.parent.exists() and not upload.parent.exists()
