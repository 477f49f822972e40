"""Deleting a job for good (DELETE /v1/jobs/{id}, `speechq delete`) and deleting finished jobs after
SPEECHQ_RETENTION_DAYS (the reconciler calls `sweep`).

A deleted job leaves nothing behind: its rows (job, archives, files, channels, segments, results, the
batches that held only its segments, and any row of another table that references the job with ON DELETE
CASCADE) and its audio in the spool (uploads, decoded channels, batches, exports). Files submitted as
server-side paths under SPEECHQ_IMPORT_ROOT are the operator's own and are not touched.
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from shared import progress
from shared.config import Settings
from shared.schema import (Archive, Batch, Channel, File, Job, JobState, Result, Segment, utcnow)
from shared.storage import Spool, remove_batch

log = logging.getLogger(__name__)
ENDED = (JobState.done, JobState.failed, JobState.cancelled)
SPOOL_FOLDERS = ("uploads", "audio", "exports")  # per-job folders under the spool root


def delete_rows(db: Session, job_id: str) -> list[Path]:
    """Delete the job's rows in the caller's transaction; return the batch files to remove after the commit.

    The job row is locked first, as every writer does (shared/progress.lock_jobs), so that a worker busy with
    the job waits for the delete rather than deadlocking with it."""
    progress.lock_jobs(db, [job_id])
    batch_ids = set(db.scalars(select(Segment.batch_id).where(Segment.job_id == job_id,
                                                              Segment.batch_id.is_not(None)).distinct()))
    file_ids = select(File.id).where(File.job_id == job_id).scalar_subquery()
    db.execute(delete(Result).where(Result.job_id == job_id))
    db.execute(delete(Segment).where(Segment.job_id == job_id))
    db.execute(delete(Channel).where(Channel.file_id.in_(file_ids)))
    db.execute(delete(File).where(File.job_id == job_id))
    db.execute(delete(Archive).where(Archive.job_id == job_id))
    paths: list[Path] = []
    if batch_ids:  # a batch may also hold other jobs' segments: it goes only when none is left
        alone = list(db.scalars(select(Batch).where(Batch.id.in_(batch_ids),
                                                    ~exists().where(Segment.batch_id == Batch.id))))
        paths = [Path(b.path) for b in alone]
        if alone:
            db.execute(delete(Batch).where(Batch.id.in_([b.id for b in alone])))
    db.execute(delete(Job).where(Job.id == job_id))  # other tables' rows go by ON DELETE CASCADE
    return paths


def remove_audio(spool: Spool, job_id: str, batch_files: list[Path]) -> None:
    """After the commit: the job's folders in the spool and the batch files that held only its audio."""
    for kind in SPOOL_FOLDERS:
        shutil.rmtree(spool.root / kind / job_id, ignore_errors=True)
    for path in batch_files:
        remove_batch(path)


def sweep(settings: Settings, db_session, limit: int = 200) -> int:
    """Delete jobs that ended more than settings.retention_days ago (at most `limit` per call); 0 when off.

    `db_session` is a context manager factory (shared.db.session_scope): each job is deleted in its own
    transaction, so one that fails does not hold back the others.
    """
    if not settings.retention_days:
        return 0
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    with db_session() as db:
        expired = list(db.scalars(select(Job.id).where(Job.state.in_(ENDED), Job.finished_at < cutoff)
                                  .order_by(Job.finished_at).limit(limit)))
    spool = Spool(settings.spool)
    deleted = 0
    for job_id in expired:
        try:
            with db_session() as db:
                batch_files = delete_rows(db, job_id)
        except Exception:  # noqa: BLE001 - logged; the next sweep tries again
            log.exception("retention: deleting job %s failed", job_id)
            continue
        remove_audio(spool, job_id, batch_files)
        deleted += 1
    if deleted:
        log.info("retention: deleted %d job(s) that ended more than %g day(s) ago", deleted, settings.retention_days)
    return deleted

