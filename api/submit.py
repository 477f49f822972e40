"""Create a job from files already on disk (uploads in the spool, or server-side paths)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from shared import progress, tasks
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
               use_itn: bool | None = None, job: Job | None = None) -> tuple[Job, list[File], list[Archive]]:
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


def enqueue(files: list[File], archives: list[Archive]) -> None:
    """After the commit: the rows exist before any worker can see a message about them."""
    for a in archives:
        tasks.send_archive(a.id, a.job_id, a.name)
    tasks.send_files([tasks.FileRef(f.id, f.job_id, f.name) for f in files])


def resolve_server_path(settings: Settings, raw: str) -> Path:
    if settings.import_root is None:
        raise SubmitError("server-side paths are disabled: set SPEECHQ_IMPORT_ROOT")
    root = settings.import_root.resolve()
    path = Path(raw)
    path = (path if path.is_absolute() else root / path).resolve()
    if path != root and root not in path.parents:
        raise SubmitError(f"{raw}: outside the import root")
    if not path.is_file():
        raise SubmitError(f"{raw}: no such file")
    return path
