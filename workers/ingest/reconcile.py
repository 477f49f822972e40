"""The reconciler: re-enqueues work whose state is stuck past the deadline (contract 1).

A lost message or a restarted Redis delays work but loses none: the rows say what is left. It runs on its
own queue ("housekeeping") and consumer, so that it runs on time whatever the ingest backlog.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import select, update

from shared import counters, progress, retention, sweeps, tasks, webhooks
from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Archive, ArchiveState, Batch, BatchState, File, FileState, Job, JobState, utcnow
from shared.tasks import app
from workers.ingest import batching, sweep

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


class Reminders:
    """Rows this process re-sent, so that a stale row is sent again once per deadline, not on every tick
    (one housekeeping process runs the reconciler; a restart only sends one reminder more)."""

    def __init__(self):
        self._sent: dict[str, float] = {}

    def due(self, rows: list, key=lambda row: row) -> list:
        """The rows not re-sent within the deadline, now counted as re-sent."""
        now, every = time.monotonic(), get_settings().task_deadline_seconds
        self._sent = {k: t for k, t in self._sent.items() if now - t < every}
        rows = [r for r in rows if key(r) not in self._sent]
        self._sent.update((key(r), now) for r in rows)
        return rows


_reminders = Reminders()


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
        # Work sent again keeps a sane priority: its job's position (files ended so far), not the front.
        at = tasks.positions(db, [f.job_id for f in files] + [a.job_id for a in stuck])
        batch_at = batching.positions(db, batches)
    # Rows still `running` cannot be touched (the claim takes over only stale rows): remember them instead.
    stuck = _reminders.due(stuck, key=lambda a: a[0])
    files = _reminders.due(files, key=lambda f: f.id)
    batches = _reminders.due(batches)
    for archive_id, job_id, name in stuck:
        tasks.send_archive(archive_id, job_id, name, position=at.get(job_id, 0))
    tasks.resend_files(files, at)
    for batch_id in batches:
        tasks.send_batch(batch_id, position=batch_at.get(batch_id, 0))
    made = batching.batch_pending()
    counters.add(settings, counters.REENQUEUED, archives=len(stuck), files=len(files), batches=len(batches))
    try:
        webhooks.send_due(settings)  # the outbox: job endings to their callback URLs, retried with backoff
    except Exception:  # noqa: BLE001 - deliveries wait for the next round; re-enqueueing must go on
        log.exception("webhook deliveries failed; the next reconcile tries again")
    with session_scope() as db:
        sweeps.orphan_uploads(db, settings.spool, settings.upload_orphan_grace_seconds)
    try:
        retention.sweep(settings, session_scope)  # SPEECHQ_RETENTION_DAYS: finished jobs deleted after N days
    except Exception:  # noqa: BLE001 - expired jobs wait for the next round; re-enqueueing must go on
        log.exception("retention sweep failed; the next reconcile tries again")
    try:
        sweep.sweep()  # decoded audio and batches
    except Exception:  # noqa: BLE001 - orphans wait for the next round; re-enqueueing must go on
        log.exception("spool sweep failed; the next reconcile tries again")
    if files or batches or stuck or made:
        log.info("reconciler: re-enqueued %d archive(s), %d file(s), %d batch(es); made %d new batch(es)",
                 len(stuck), len(files), len(batches), len(made))
    return {"archives": len(stuck), "files": len(files), "batches": len(batches), "made": len(made)}
