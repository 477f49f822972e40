"""Create a job from files already on disk (uploads in the spool, or server-side paths)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import mapping, schemas
from api.heartbeats import gpu_workers
from shared import progress, tasks
from shared.db import retrying, session_scope
from shared.formats import is_archive, sidecar
from shared.config import Settings
from shared.models.tokens import LANGUAGES
from shared.schema import Archive, File, FileState, Job

log = logging.getLogger(__name__)


class SubmitError(ValueError):
    pass


@dataclass
class Incoming:
    name: str
    path: Path
    size: int
    sha256: str | None = None


def _is_archive(item: Incoming) -> bool:

    with open(item.path, "rb") as f:
        head = f.read(512)
    return is_archive(item.name, head)


def create_job(db: Session, settings: Settings, items: list[Incoming], *, name: str | None = None,
               channel_labels: str | None = None, language: str | None = None,
               use_itn: bool | None = None, word_timings: bool | None = None,
               job: Job | None = None) -> tuple[Job, list[File], list[Archive]]:
    """Rows for the job, its files and archives. Returns (job, files, archives) to enqueue; a sidecar such as
    notes.txt gets a row in state `skipped` and is not enqueued."""
    language = language or settings.language
    if language not in LANGUAGES:
        raise SubmitError(f"unknown language {language!r}; one of {sorted(LANGUAGES)}")
    labels = channel_labels or settings.channel_labels
    if not settings.labels(labels):
        raise SubmitError("channel_labels must name at least one channel, e.g. 'agent,customer'")
    job = job or Job()
    job.name, job.channel_labels, job.language = name, labels, language
    job.use_itn = settings.use_itn if use_itn is None else use_itn
    job.word_timings = settings.word_timings if word_timings is None else word_timings
    db.add(job)
    db.flush()
    files, archives = [], []
    for item in items:
        if _is_archive(item):
            a = Archive(job_id=job.id, name=item.name, path=str(item.path), size_bytes=item.size)
            db.add(a)
            archives.append(a)
        elif reason := sidecar(item.name):
            db.add(File(job_id=job.id, name=item.name, path=str(item.path), size_bytes=item.size,
                        sha256=item.sha256, state=FileState.skipped, error=reason))
            job.files_skipped = (job.files_skipped or 0) + 1
        else:
            f = File(job_id=job.id, name=item.name, path=str(item.path), size_bytes=item.size, sha256=item.sha256)
            db.add(f)
            files.append(f)
    db.flush()
    job.files_total = len(files) + (job.files_skipped or 0)
    if not files and not archives:
        progress.recount(db, job)  # nothing to process: the job ends now
    return job, files, archives


def scoped_key(owner: str | None, key: str | None) -> str | None:
    """What is stored for a client's Idempotency-Key: a digest of the key together with the API key that
    sent it, so that one caller's key never finds another caller's job."""
    if not key:
        return None
    return hashlib.sha256(f"{owner or '-'}\0{key}".encode()).hexdigest()


def replay(settings: Settings, key: str | None) -> schemas.JobStatus | None:
    """The job an earlier submission with this Idempotency-Key created, or None."""
    if not key:
        return None
    workers = gpu_workers(settings)
    for attempt in retrying():
        with attempt, session_scope() as db:
            job = db.scalar(select(Job).where(Job.idempotency_key == key))
            return None if job is None else mapping.job_status(db, job, workers)


def store(settings: Settings, items: list[Incoming], row: dict, **options) -> tuple[bool, schemas.JobStatus]:
    """Insert the job (`row`: columns of the Job such as id, idempotency_key) and its files, commit, then enqueue.
    Blocking: call it from a worker thread, not the event loop. One short transaction, run again while the
    database is unreachable (settings.db_retry_seconds); the answer is built inside it, so that once the
    commit succeeds the caller has the job's id, whatever fails next.

    Returns (True, status) for a new job, (False, status) for the job an earlier submission with the same
    `row["idempotency_key"]` made: that one won a race, and this call stored nothing.
    """
    workers = gpu_workers(settings)
    for attempt in retrying():
        with attempt, session_scope() as db:
            try:
                job, files, archives = create_job(db, settings, items, job=Job(**row), **options)
                out = mapping.job_status(db, job, workers)
                db.commit()
            except IntegrityError:
                db.rollback()
                if (ours := db.get(Job, row["id"])) is not None:  # an earlier attempt's commit did go through
                    log.warning("job %s: stored by an attempt whose connection was lost; the reconciler sends "
                                "its messages", ours.id)
                    return True, mapping.job_status(db, ours, workers)
                key = row.get("idempotency_key")
                earlier = key and db.scalar(select(Job).where(Job.idempotency_key == key))
                if not earlier:
                    raise
                log.info("Idempotency-Key %r: job %s already exists; nothing stored", key, earlier.id)
                return False, mapping.job_status(db, earlier, workers)
    try:
        enqueue(files, archives)
    except Exception as exc:  # noqa: BLE001 - the job is stored and its client gets its id: the reconciler sends
        log.warning("job %s is stored but its messages were not sent (%s: %s): the reconciler sends them after "
                    "SPEECHQ_TASK_DEADLINE_SECONDS", job.id, exc.__class__.__name__, exc)
    log.info("job %s: %d file(s), %d archive(s) queued, %d skipped", job.id, len(files), len(archives),
             job.files_skipped or 0)
    return True, out


def enqueue(files: list[File], archives: list[Archive]) -> None:
    """After the commit: the rows exist before any worker can see a message about them. The job's first
    archives and files go first in the queue, before the tails of jobs sent earlier (tasks.priority)."""
    for position, a in enumerate(archives):
        tasks.send_archive(a.id, a.job_id, a.name, position=position)
    tasks.send_new_files([tasks.FileRef(f.id, f.job_id, f.name, f.size_bytes or 0) for f in files])


def resolve_server_path(settings: Settings, raw: str) -> Path:
    if settings.import_root is None:
        raise SubmitError("server-side paths are disabled: set SPEECHQ_IMPORT_ROOT")
    root = settings.import_root.resolve()
    try:  # a part of the path longer than the file system allows: "File name too long", not a 500
        path = Path(raw)
        path = (path if path.is_absolute() else root / path).resolve()
        if path != root and root not in path.parents:
            raise SubmitError(f"{raw}: outside the import root")
        if not path.is_file():
            raise SubmitError(f"{raw}: no such file")
    except (OSError, ValueError) as exc:
        raise SubmitError(f"paths: {raw[:300]!r}: {getattr(exc, 'strerror', None) or exc}") from None
    return path
