"""The reconciler: re-enqueues work whose state is stuck past the deadline (contract 1).

A lost message or a restarted Redis delays work but loses none: the rows say what is left.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update

from shared import progress, tasks
from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Archive, ArchiveState, Batch, BatchState, File, FileState, Job, JobState, utcnow
from shared.tasks import app
from workers.ingest import batching

log = logging.getLogger(__name__)


class _NoEvents:
    """Stands in for Celery's event dispatcher where an event must not be published."""

    def publish(self, *_args, **_kwargs) -> None:
        return None


class Housekeeping(app.Task):
    """A task the operator need not watch: it sends no monitoring events, so Flower's task list keeps to the work.

    `send_events = False` silences the worker's events (received, started, succeeded). The task-sent event comes
    from the sender (beat), and Celery switches it on for every task at once (task_send_sent_event), so the
    sender is handed a dispatcher that drops it.
    """

    send_events = False

    def apply_async(self, args=None, kwargs=None, **options):
        options.setdefault("event_dispatcher", _NoEvents())
        return super().apply_async(args, kwargs, **options)


@app.task(name=tasks.RECONCILE, base=Housekeeping)
def reconcile() -> dict:
    settings = get_settings()
    stale = utcnow() - timedelta(seconds=settings.task_deadline_seconds)
    with session_scope() as db:
        files = [tasks.FileRef(*row) for row in db.execute(select(File.id, File.job_id, File.name).where(
            File.state.in_((FileState.queued, FileState.ingesting)), File.updated_at < stale))]
        batches = list(db.scalars(select(Batch.id).where(
            Batch.state.in_((BatchState.queued, BatchState.running)), Batch.updated_at < stale)))
        stuck = db.execute(select(Archive.id, Archive.job_id, Archive.name).where(
            Archive.state.in_((ArchiveState.queued, ArchiveState.expanding)), Archive.updated_at < stale)).all()
        # Touch what we re-enqueue so a long backlog gets one reminder per deadline, not one per tick.
        if files:
            db.execute(update(File).where(File.id.in_([f.id for f in files]), File.state == FileState.queued)
                       .values(updated_at=utcnow()).execution_options(synchronize_session=False))
        if batches:
            db.execute(update(Batch).where(Batch.id.in_(batches), Batch.state == BatchState.queued)
                       .values(updated_at=utcnow()).execution_options(synchronize_session=False))
        running = list(db.scalars(select(Job.id).where(Job.state == JobState.running)))
        progress.lock_jobs(db, running)
        progress.settle(db, running)
    for archive_id, job_id, name in stuck:
        tasks.send_archive(archive_id, job_id, name)
    tasks.send_files(files)
    for batch_id in batches:
        tasks.send_batch(batch_id)
    made = batching.batch_pending()
    if files or batches or stuck or made:
        log.info("reconciler: re-enqueued %d archive(s), %d file(s), %d batch(es); made %d new batch(es)",
                 len(stuck), len(files), len(batches), len(made))
    return {"archives": len(stuck), "files": len(files), "batches": len(batches), "made": len(made)}
