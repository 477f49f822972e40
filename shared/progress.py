"""Job state from database counters: files and channels finish when their rows say so.

Every function here runs inside the caller's transaction, after `lock_jobs`, so that two workers
finishing the last batches of one job cannot both miss the other's writes.
"""

from __future__ import annotations

import time

from sqlalchemy import case, exists, func, select, update
from sqlalchemy.orm import Session

from shared import endings
from shared.analytics import store as analytics_store
from shared.schema import Archive, ArchiveState, File, FileState, Job, JobState, Segment, SegmentState, utcnow

ACTIVE_FILE = (FileState.queued, FileState.ingesting, FileState.segmented)
OPEN_ARCHIVE = (ArchiveState.queued, ArchiveState.expanding)

# A job's counters are an aggregate over all its files: recomputed on every settle, they made a job of N files
# cost O(N^2) (issue 16). Each process recounts a job at most this often while the job is mid-way; status polls
# see counters up to this old (or one reconcile interval, if no file of the job settles meanwhile). The end
# of a job never waits on it: see `_recount_due`.
RECOUNT_SECONDS = 2.0
_recounted: dict[str, float] = {}  # job id -> time.monotonic() of this process's last full recount


class FilesFailed(Exception):
    """Raised at the end of an ingest or archive task whose files failed, after their rows say so and the
    rest of the work went on: the task ends FAILURE in Flower. The message is acked, never redelivered."""

    @classmethod
    def of(cls, failures: list[tuple[str, str]], total: int) -> FilesFailed:
        """One message naming the files as submitted (the args stay one string, so it pickles)."""
        shown = "; ".join(f"{name}: {error}" for name, error in failures[:5])
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        return cls(f"{len(failures)} of {total} file(s) failed: {shown}{more}")


def lock_jobs(db: Session, job_ids) -> None:
    """Take the job rows' write locks in a fixed order (a no-op UPDATE locks on PostgreSQL)."""
    for job_id in sorted(set(job_ids)):
        db.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow()))


def settle(db: Session, job_ids) -> list[str]:
    """Finish files whose segments are all done (with their call analytics, in this transaction), then recount
    jobs. Returns jobs that ended now."""
    job_ids = sorted(set(job_ids))
    if not job_ids:
        return []
    open_segments = (
        select(Segment.id)
        .where(Segment.file_id == File.id, Segment.state.in_((SegmentState.pending, SegmentState.batched)))
        .exists()
    )
    finished = list(db.scalars(select(File.id).where(
        File.job_id.in_(job_ids), File.state == FileState.segmented, File.duplicate_of.is_(None), ~open_segments)))
    if finished:
        db.execute(update(File).where(File.id.in_(finished)).values(state=FileState.done, updated_at=utcnow())
                   .execution_options(synchronize_session=False))
        # metrics, and redaction of a redact job's texts: raw PII stays no longer than the file's processing
        analytics_store.settled(db, finished)
    copies = db.scalars(select(File).where(File.job_id.in_(job_ids), File.duplicate_of.is_not(None),
                                           File.state == FileState.segmented)).all()
    for copy in copies:
        original = db.get(File, copy.duplicate_of)
        if original is not None and original.state not in ACTIVE_FILE:
            copy.state, copy.error, copy.duration_s = original.state, original.error, original.duration_s
            copy.format, copy.sample_rate = original.format, original.sample_rate
            copy.num_channels = original.num_channels
    ended = []
    for job in db.scalars(select(Job).where(Job.id.in_(job_ids))):
        if _recount_due(db, job) and recount(db, job):
            ended.append(job.id)
    return ended


def _recount_due(db: Session, job: Job) -> bool:
    """Whether this settle recounts the job in full. Always when the job may end now (no file of it is still
    active: an EXISTS that the index on (job_id, state) answers at once), so that it ends with exact counters
    in the transaction of its last file; always while an archive of it is open (its files are still arriving,
    and the next archive's member limit reads files_total); otherwise at most every RECOUNT_SECONDS."""
    last = _recounted.get(job.id)
    if last is None or time.monotonic() - last >= RECOUNT_SECONDS:
        return True
    if db.scalar(select(exists().where(Archive.job_id == job.id, Archive.state.in_(OPEN_ARCHIVE)))):
        return True
    return not db.scalar(select(exists().where(File.job_id == job.id, File.state.in_(ACTIVE_FILE))))


def _remember(job_id: str) -> None:
    """Note a full recount; forget jobs not recounted lately (ended, or settled by other processes)."""
    now = time.monotonic()
    for stale in [j for j, at in list(_recounted.items()) if now - at >= RECOUNT_SECONDS]:  # list(): threads
        _recounted.pop(stale, None)
    _recounted[job_id] = now


def recount(db: Session, job: Job) -> bool:
    """The job's counters from all its files, and its end if none is still active. Returns whether it ended."""
    _remember(job.id)
    row = db.execute(
        select(
            func.count(),
            func.sum(case((File.state == FileState.done, 1), else_=0)),
            func.sum(case((File.state.in_((FileState.failed, FileState.cancelled)), 1), else_=0)),
            func.sum(case((File.state == FileState.skipped, 1), else_=0)),
            func.coalesce(func.sum(File.duration_s), 0.0),
            func.coalesce(func.sum(case((File.state == FileState.done, File.duration_s), else_=0.0)), 0.0),
        ).where(File.job_id == job.id)
    ).one()
    total, done, failed, skipped, seconds, seconds_done = row
    job.files_total, job.files_done, job.files_failed = total, done or 0, failed or 0
    job.files_skipped = skipped or 0
    job.audio_seconds_total, job.audio_seconds_done = float(seconds), float(seconds_done)
    expanding = db.scalar(select(func.count()).where(Archive.job_id == job.id, Archive.state.in_(OPEN_ARCHIVE)))
    if expanding:
        return False
    ended = job.files_done + job.files_failed + job.files_skipped == total
    if job.state in (JobState.queued, JobState.running) and ended:
        audio_files = total - job.files_skipped
        # an archive refused whole (a bomb, over a limit, unreadable) held the job's calls: with nothing done,
        # the job failed, rather than ending done as if it held no audio
        refused = 0 if job.files_done or audio_files else db.scalar(
            select(func.count()).where(Archive.job_id == job.id, Archive.state == ArchiveState.failed))
        job.state = JobState.done if job.files_done or not (audio_files or refused) else JobState.failed
        if job.state == JobState.failed and refused:
            job.error = job.error or "every archive was refused; see the job's errors"
        elif job.state == JobState.failed:
            job.error = job.error or "every file failed; see the files' errors"
        elif not audio_files:
            skipped_note = f" ({job.files_skipped} skipped as not audio)" if job.files_skipped else ""
            job.error = job.error or f"the job holds no audio files{skipped_note}"
        job.finished_at = utcnow()
        endings.job_ended(db, job)
        return True
    return False
