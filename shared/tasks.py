"""The Celery application, and the tasks sent by name: the API and each worker role enqueue work
here without importing the code that runs it (ARCHITECTURE.md, contract 3: at-least-once delivery).

Each worker role registers its own tasks on this app (workers.ingest.worker, workers.gpu.worker).

Fairness between jobs (issue 14): every message carries a priority from its position in its job (how many of
the job's files were sent, or finished, before it), in logarithmic steps, so the first files of a new job
overtake the tail of a huge job sent earlier, and a job's own work keeps its order. On the Redis transport
each priority is its own list and a worker pops the lowest number first; within a priority, first in, first out.
"""

from __future__ import annotations

from typing import NamedTuple

from celery import Celery
from sqlalchemy import select

from shared.config import get_settings
from shared.schema import Job

INGEST_FILES = "workers.ingest.files.ingest_files"
EXPAND_ARCHIVE = "workers.ingest.archives.expand_archive"
RECONCILE = "workers.ingest.reconcile.reconcile"
RUN_BATCH = "workers.gpu.tasks.run_batch"
HOUSEKEEPING = "housekeeping"  # the reconciler's own queue: it never waits behind the ingest backlog
REPR_CHARS = 1000  # what Flower shows of a task's arguments
PRIORITIES = 10  # kombu's Redis transport: 0 is served first, 9 last; one Redis list per priority

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
    # Unacked messages (a lost worker, the visibility timeout) go back to the list of their own priority.
    broker_transport_options={"visibility_timeout": 3600, "priority_steps": list(range(PRIORITIES))},
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
    """A file to send to the ingest queue; job and name make the task readable in Flower. `size` (bytes, 0 where
    unknown) orders a new job's files: the smallest go first, alone, and the largest lead the groups."""
    id: str
    job_id: str
    name: str
    size: int = 0


def describe(files: list[FileRef]) -> str:
    """A task's arguments as Flower shows them: the job and the files' names, not ids."""
    jobs = sorted({f.job_id for f in files})
    text = f"job {jobs[0]}" if len(jobs) == 1 else f"jobs {', '.join(jobs)}"
    text += ": " + ", ".join(f.name for f in files)
    return text if len(text) <= REPR_CHARS else text[:REPR_CHARS - 1] + "…"


def priority(position: int) -> int:
    """The priority of work at `position` in its job (0-based): floor(log4(position + 1)), at most 9. Files 0-2
    of every job get 0, files 3-14 get 1, 15-62 get 2, ... 65,535-262,142 get 8, and the rest 9."""
    return min(PRIORITIES - 1, ((max(position, 0) + 1).bit_length() - 1) // 2)


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold a queue's messages, one per priority (for its depth, sum their lengths)."""
    return [queue] + [f"{queue}\x06\x16{p}" for p in range(1, PRIORITIES)]


def send_files(files: list[FileRef], start: int = 0) -> None:
    """Send files to the ingest queue in groups of at most SPEECHQ_INGEST_GROUP_FILES, spread evenly,
    so that one worker runs the VAD on the channels of several calls in one batched pass. `start` is the
    files' position in their job: each group's priority follows from it and the files sent before it.

    Largest first (where sizes are known): group i takes files i, i + n, i + 2n, ... of the files sorted by
    size, so every group holds at most one of the largest files and the groups shrink along the queue. The
    longest tasks start first and the job's last minutes are short tasks on every worker, not one long call
    on one of them while the others idle."""
    if not files:
        return
    files = sorted(files, key=lambda f: -f.size)  # stable: files of unknown size keep their order
    size = get_settings().ingest_group_files
    groups = -(-len(files) // size)
    position = start
    for i in range(groups):
        group = files[i::groups]
        app.send_task(INGEST_FILES, ([f.id for f in group],), queue="ingest", priority=priority(position),
                      argsrepr=describe(group))
        position += len(group)


def send_new_files(files: list[FileRef], start: int = 0) -> None:
    """A job's new files, from position `start`: the first SPEECHQ_INGEST_FIRST_FILES of the job go one per
    task, and they are its smallest files, so that the job's first segments (and its first GPU batch) come
    within seconds (issue 16); the rest in groups."""
    head = max(0, min(len(files), get_settings().ingest_first_files - start))
    if head:
        files = sorted(files, key=lambda f: f.size)  # stable: files of unknown size keep their order
    for i, ref in enumerate(files[:head]):
        send_files([ref], start=start + i)
    if files[head:]:
        send_files(files[head:], start=start + head)


def send_archive(archive_id: str, job_id: str, name: str, position: int = 0) -> None:
    app.send_task(EXPAND_ARCHIVE, (archive_id,), queue="ingest", priority=priority(position),
                  argsrepr=f"job {job_id}: {name}")


def send_batch(batch_id: str, position: int = 0) -> None:
    """A GPU batch; `position`: how far the least advanced of its jobs has got (files ended)."""
    app.send_task(RUN_BATCH, (batch_id,), queue="gpu", priority=priority(position), argsrepr=f"batch {batch_id}")


def positions(db, job_ids) -> dict[str, int]:
    """Where work sent again (a retry, a reminder) stands in each job: the job's files ended so far."""
    ids = list(set(job_ids))
    if not ids:
        return {}
    rows = db.execute(select(Job.id, Job.files_done + Job.files_failed + Job.files_skipped)
                      .where(Job.id.in_(ids))).all()
    return {job_id: int(n or 0) for job_id, n in rows}


def resend_files(files: list[FileRef], at: dict[str, int]) -> None:
    """Send files again (retries, reminders) job by job, each job's files from its position in `at`."""
    by_job: dict[str, list[FileRef]] = {}
    for f in files:
        by_job.setdefault(f.job_id, []).append(f)
    for job_id, refs in by_job.items():
        send_files(refs, start=at.get(job_id, 0))
