"""Job counters on settle (issue 16): the full recount is throttled mid-job, yet the job ends on its last
file with exact counters, and the cost of settling a file does not grow with the job's size."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from shared import endings, progress
from shared.db import migrate, session_scope
from shared.schema import (Archive, ArchiveState, Channel, File, FileState, Job, JobState, Segment, SegmentState,
                           new_id)


@pytest.fixture(scope="module")
def db_url(database_url):
    migrate(database_url)
    return database_url


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """A data folder for the ending's spool clean-up, this process's recount times forgotten, and a
    throttle that never runs out by itself: a test moves time on with `_later`."""
    from shared.config import get_settings

    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    monkeypatch.setattr(progress, "_recounted", {})
    monkeypatch.setattr(progress, "RECOUNT_SECONDS", 3600.0)
    yield
    get_settings.cache_clear()


@pytest.fixture
def ends(monkeypatch) -> list[str]:
    """The jobs `endings.job_ended` was called for, in order (it still runs)."""
    seen = []
    real = endings.job_ended

    def spy(db, job):
        seen.append(job.id)
        real(db, job)

    monkeypatch.setattr(endings, "job_ended", spy)
    return seen


def _job(db, done: int, segmented: int, failed: int = 0, skipped: int = 0) -> tuple[str, list[str]]:
    """A running job: `done`, `failed` and `skipped` files that have ended (0.5 s each), and `segmented` files
    of one second, each with one pending segment. Returns the job's id and its segments' ids."""
    job = Job(state=JobState.running)
    db.add(job)
    db.flush()
    states = [FileState.done] * done + [FileState.failed] * failed + [FileState.skipped] * skipped
    rows = [{"id": new_id(), "job_id": job.id, "name": f"{i}.wav", "path": "-", "state": state,
             "duration_s": None if state == FileState.skipped else 0.5} for i, state in enumerate(states)]
    rows += [{"id": new_id(), "job_id": job.id, "name": f"s{i}.wav", "path": "-", "state": FileState.segmented,
              "duration_s": 1.0} for i in range(segmented)]
    db.execute(insert(File), rows)
    open_files = rows[len(states):]
    channels = [{"id": new_id(), "file_id": f["id"], "index": 0, "label": "agent"} for f in open_files]
    segments = [{"id": new_id(), "job_id": job.id, "file_id": f["id"], "channel_id": c["id"], "start_ms": 0,
                 "end_ms": 1000, "state": SegmentState.pending} for f, c in zip(open_files, channels)]
    if segments:
        db.execute(insert(Channel), channels)
        db.execute(insert(Segment), segments)
    return job.id, [s["id"] for s in segments]


def _segment_done(db, segment_id: str, job_id: str) -> list[str]:
    """What a GPU batch's results do to one segment: its state, then the job's settle (progress.settle)."""
    progress.lock_jobs(db, [job_id])
    db.get(Segment, segment_id).state = SegmentState.done
    db.flush()
    return progress.settle(db, [job_id])


def _later(job_id: str) -> None:
    """As if RECOUNT_SECONDS had passed since this process last recounted the job."""
    progress._recounted[job_id] -= progress.RECOUNT_SECONDS


def _counters(job: Job) -> tuple:
    return (job.files_total, job.files_done, job.files_failed, job.files_skipped, job.audio_seconds_total,
            job.audio_seconds_done)


def test_the_job_ends_on_its_last_file_with_exact_counters_though_recounts_were_throttled(db_url, ends):
    with session_scope(db_url) as db:
        job_id, segments = _job(db, done=3, segmented=4, failed=2, skipped=1)
        assert progress.settle(db, [job_id]) == []  # the first settle counts in full
        job = db.get(Job, job_id)
        assert _counters(job) == (10, 3, 2, 1, 6.5, 1.5)
        for seg in segments[:-1]:
            assert _segment_done(db, seg, job_id) == []
        assert job.files_done == 3  # mid-job: throttled, the counters lag
        assert job.state == JobState.running and job.finished_at is None and ends == []

        assert _segment_done(db, segments[-1], job_id) == [job_id]  # the last file: the job ends now
        assert job.state == JobState.done and job.finished_at is not None
        assert _counters(job) == (10, 7, 2, 1, 6.5, 5.5)
        assert ends == [job_id]
        assert progress.settle(db, [job_id]) == [] and ends == [job_id]  # ended once


def test_a_job_whose_every_file_failed_ends_failed_on_a_throttled_settle(db_url, ends):
    with session_scope(db_url) as db:
        job_id, _ = _job(db, done=0, segmented=0, failed=1)
        f = File(job_id=job_id, name="last.wav", path="-", state=FileState.ingesting)
        db.add(f)
        db.flush()
        assert progress.settle(db, [job_id]) == []
        f.state = FileState.failed  # as the ingest worker's _fail does, then settles
        assert progress.settle(db, [job_id]) == [job_id]
        job = db.get(Job, job_id)
        assert (job.state, job.files_total, job.files_failed, ends) == (JobState.failed, 2, 2, [job_id])


def test_the_counters_are_refreshed_once_the_interval_has_passed(db_url, ends):
    with session_scope(db_url) as db:
        job_id, segments = _job(db, done=5, segmented=3)
        progress.settle(db, [job_id])
        _segment_done(db, segments[0], job_id)
        job = db.get(Job, job_id)
        assert job.files_done == 5  # throttled
        _later(job_id)
        _segment_done(db, segments[1], job_id)
        assert (job.files_done, job.audio_seconds_done, job.state) == (7, 4.5, JobState.running)
        assert ends == []
        progress._recounted.clear()  # another process (the reconciler) settles the job: its own first recount
        db.get(Segment, segments[2]).state = SegmentState.done
        db.flush()
        assert progress.settle(db, [job_id]) == [job_id]
        assert (job.files_done, job.state) == (8, JobState.done)


def test_every_settle_recounts_while_an_archive_of_the_job_is_open(db_url):
    """An archive's members arrive in one transaction; the next archive's member limit reads files_total."""
    with session_scope(db_url) as db:
        job_id, _ = _job(db, done=1, segmented=1)
        archive = Archive(job_id=job_id, name="calls.zip", path="-", state=ArchiveState.expanding)
        db.add(archive)
        db.flush()
        progress.settle(db, [job_id])
        db.execute(insert(File), [{"id": new_id(), "job_id": job_id, "name": f"calls.zip/{i}.wav", "path": "-"}
                                  for i in range(4)])
        archive.state = ArchiveState.done
        db.add(Archive(job_id=job_id, name="calls.zip/inner.zip", path="-", state=ArchiveState.queued))
        db.flush()
        assert progress.settle(db, [job_id]) == []
        assert db.get(Job, job_id).files_total == 6


def _vm_steps(db, job_id: str, segment_id: str) -> int:
    """SQLite virtual-machine steps of one file's settle: what the database did, not how long it took."""
    steps = [0]

    def tick():
        steps[0] += 1
        return 0

    raw = db.connection().connection.dbapi_connection
    raw.set_progress_handler(tick, 1)
    try:
        _segment_done(db, segment_id, job_id)
    finally:
        raw.set_progress_handler(None, 0)
    return steps[0]


def test_settling_a_file_costs_the_same_in_a_job_of_any_size(db_url, ends):
    """A file's settle mid-job does not aggregate over the job's files. It did on every settle (O(N^2) for the
    job): about 3,500 steps at 100 files and 135,000 at 5,000; now about 540 at either size."""
    if not db_url.startswith("sqlite"):
        pytest.skip("counts SQLite's virtual-machine steps")
    cost = {}
    with session_scope(db_url) as db:
        for size in (100, 5000):
            job_id, segments = _job(db, done=size - 3, segmented=3)
            progress.settle(db, [job_id])  # the job's first full recount in this process
            cost[size] = _vm_steps(db, job_id, segments[0])
    assert cost[5000] < 1.5 * cost[100], cost
    assert ends == []
