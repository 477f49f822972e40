"""Sweeps of the spool: what no job owns any more is removed.

An API killed while it copied an upload (or a request that failed in a way its own clean-up could not
catch) leaves `uploads/<job id>/` behind with no job row, or a job that has ended. The reconciler calls
`orphan_uploads` on every tick; a folder is left alone while anything in it changed within the grace
period, so an upload still being copied is never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.schema import Job, JobState

log = logging.getLogger(__name__)
ENDED = (JobState.done, JobState.failed, JobState.cancelled)


def last_change(folder: Path) -> float:
    """The newest modification time of the folder and everything under it (seconds since the epoch)."""
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def orphan_uploads(db: Session, spool: Path, grace_seconds: float, now: float | None = None) -> list[str]:
    """Remove upload folders quiet for `grace_seconds` whose job does not exist or has ended; their ids."""
    root = Path(spool) / "uploads"
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    quiet = {}
    for folder in root.iterdir():
        try:
            if folder.is_dir() and now - last_change(folder) >= grace_seconds:
                quiet[folder.name] = folder
        except FileNotFoundError:  # removed meanwhile (a job ended)
            continue
    if not quiet:
        return []
    alive = set(db.scalars(select(Job.id).where(Job.id.in_(quiet), Job.state.not_in(ENDED))))
    removed = []
    for job_id, folder in quiet.items():
        if job_id in alive:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(job_id)
    if removed:
        log.info("removed %d orphaned upload folder(s) from %s (no job, or the job ended): %s",
                 len(removed), root, ", ".join(sorted(removed)[:10]) + (" ..." if len(removed) > 10 else ""))
    return removed
