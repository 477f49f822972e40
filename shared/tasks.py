"""The Celery application, and the tasks sent by name: the API and each worker role enqueue work
here without importing the code that runs it (ARCHITECTURE.md, contract 3: at-least-once delivery).

Each worker role registers its own tasks on this app (workers.ingest.worker, workers.gpu.worker).
"""

from __future__ import annotations

from typing import NamedTuple

from celery import Celery

from shared.config import get_settings

INGEST_FILES = "workers.ingest.files.ingest_files"
EXPAND_ARCHIVE = "workers.ingest.archives.expand_archive"
RECONCILE = "workers.ingest.reconcile.reconcile"
RUN_BATCH = "workers.gpu.tasks.run_batch"
HOUSEKEEPING = "housekeeping"  # the reconciler's own queue: it never waits behind the ingest backlog
REPR_CHARS = 1000  # what Flower shows of a task's arguments

settings = get_settings()
app = Celery("speechq", broker=settings.broker)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue="ingest",
    task_routes={"workers.gpu.*": {"queue": "gpu"}, RECONCILE: {"queue": HOUSEKEEPING}},
    # Redelivery after a lost worker: longer than any task (GPU tasks take seconds).
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    beat_schedule_filename=str(settings.data_dir.resolve() / "celerybeat-schedule"),  # not in the cwd
    # A reconcile not started within its interval is dropped: the next one does the same work.
    beat_schedule={"reconcile": {"task": RECONCILE, "schedule": settings.reconcile_interval_seconds,
                                 "options": {"queue": HOUSEKEEPING,
                                             "expires": settings.reconcile_interval_seconds}}},
)


class FileRef(NamedTuple):
    """A file to send to the ingest queue; job and name make the task readable in Flower."""
    id: str
    job_id: str
    name: str


def describe(files: list[FileRef]) -> str:
    """A task's arguments as Flower shows them: the job and the files' names, not ids."""
    jobs = sorted({f.job_id for f in files})
    text = f"job {jobs[0]}" if len(jobs) == 1 else f"jobs {', '.join(jobs)}"
    text += ": " + ", ".join(f.name for f in files)
    return text if len(text) <= REPR_CHARS else text[:REPR_CHARS - 1] + "…"


def send_files(files: list[FileRef]) -> None:
    """Send files to the ingest queue in groups of at most SPEECHQ_INGEST_GROUP_FILES, spread evenly,
    so that one worker runs the VAD on the channels of several calls in one batched pass."""
    if not files:
        return
    size = get_settings().ingest_group_files
    groups = -(-len(files) // size)
    for i in range(groups):
        group = files[i::groups]
        app.send_task(INGEST_FILES, ([f.id for f in group],), queue="ingest", argsrepr=describe(group))


def send_archive(archive_id: str, job_id: str, name: str) -> None:
    app.send_task(EXPAND_ARCHIVE, (archive_id,), queue="ingest", argsrepr=f"job {job_id}: {name}")


def send_batch(batch_id: str) -> None:
    app.send_task(RUN_BATCH, (batch_id,), queue="gpu", argsrepr=f"batch {batch_id}")
