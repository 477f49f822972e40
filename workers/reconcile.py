"""The reconciler: re-enqueues work whose state is stuck past the deadline (contract 1).

A lost message or a restarted Redis delays work but loses none: the rows say what is left.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update

from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Archive, ArchiveState, Batch, BatchState, File, FileState, Job, JobState, utcnow
from workers import packing, progress
from workers.celery_app import app

log = logging.getLogger(__name__)


@app.task(name="workers.reconcile.reconcile")
def reconcile() -> dict:
    from workers.archives import expand_archive
    from workers.gpu import run_batch
    from workers import ingest

    settings = get_settings()
    stale = utcnow() - timedelta(seconds=settings.task_deadline_seconds)
    with session_scope() as db:
        files = list(db.scalars(select(File.id).where(
            File.state.in_((FileState.queued, FileState.ingesting)), File.updated_at < stale)))
        batches = list(db.scalars(select(Batch.id).where(
            Batch.state.in_((BatchState.queued, BatchState.running)), Batch.updated_at < stale)))
        archives = list(db.scalars(select(Archive.id).where(
            Archive.state.in_((ArchiveState.queued, ArchiveState.expanding)), Archive.updated_at < stale)))
        # Touch what we re-enqueue so a long backlog gets one reminder per deadline, not one per tick.
        if files:
            db.execute(update(File).where(File.id.in_(files), File.state == FileState.queued)
                       .values(updated_at=utcnow()).execution_options(synchronize_session=False))
        if batches:
            db.execute(update(Batch).where(Batch.id.in_(batches), Batch.state == BatchState.queued)
                       .values(updated_at=utcnow()).execution_options(synchronize_session=False))
        running = list(db.scalars(select(Job.id).where(Job.state == JobState.running)))
        progress.lock_jobs(db, running)
        progress.settle(db, running)
    for archive_id in archives:
        expand_archive.apply_async((archive_id,), queue="ingest")
    ingest.enqueue(files)
    for batch_id in batches:
        run_batch.apply_async((batch_id,), queue="gpu")
    packed = packing.pack_pending()
    if files or batches or archives or packed:
        log.info("reconciler: re-enqueued %d archive(s), %d file(s), %d batch(es); packed %d",
                 len(archives), len(files), len(batches), len(packed))
    return {"archives": len(archives), "files": len(files), "batches": len(batches), "packed": len(packed)}
