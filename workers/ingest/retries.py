"""Ingest work tried again without taking healthy files down with a poison one (issue 13).

* A group whose task did not finish (its process died: a signal, out of memory, a crash in a native
  library) comes back with files that an earlier task claimed. Such a group is split: each of those files
  runs alone, the untried ones together, so the file that kills its process ends up alone and uses up its
  attempts (SPEECHQ_MAX_ATTEMPTS) by itself while the others finish.
* An unexpected exception on one file (an OSError, a bug) is kept on the file's row, and the file is tried
  again alone at once; once it has used up its attempts it fails with that error, not with a guess.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from shared import claims, progress, tasks
from shared.config import get_settings
from shared.db import session_scope
from shared.schema import File, FileState, utcnow
from shared.storage import Spool

log = logging.getLogger(__name__)
DIED = ("the ingest worker's process died on this file each time (killed by a signal, out of memory, or a "
        "crash in a native library); its log says which")
UNFINISHED = (FileState.queued, FileState.ingesting)


def split(file_ids: list[str]) -> bool:
    """Split a group that an earlier task claimed and did not finish; True when it was (nothing more to do)."""
    if len(file_ids) < 2:
        return False
    with session_scope() as db:
        rows = db.execute(select(File.id, File.job_id, File.name, File.attempts).where(
            File.id.in_(file_ids), File.state.in_(UNFINISHED))).all()
    rows = sorted(rows, key=lambda r: file_ids.index(r.id))  # the group's order
    tried = [tasks.FileRef(r.id, r.job_id, r.name) for r in rows if r.attempts > 0]
    if not tried:
        return False
    fresh = [tasks.FileRef(r.id, r.job_id, r.name) for r in rows if r.attempts == 0]
    log.warning("an earlier task on this group of %d file(s) did not finish: running %s alone", len(file_ids),
                ", ".join(f.name for f in tried))
    with session_scope() as db:  # sent at the job's position (how far it has got), as the reconciler does
        position = tasks.positions(db, [r.job_id for r in rows]).get(rows[0].job_id, 0)
    for ref in tried:
        tasks.send_files([ref], start=position)
    tasks.send_files(fresh, start=position)
    return True


def again_alone(file_id: str, exc: BaseException) -> None:
    """Keep `exc` on the file's row and send the file again, alone; the attempt cap ends the loop."""
    with session_scope() as db:
        f = db.get(File, file_id)
        if f is None or f.state != FileState.ingesting:
            return
        progress.lock_jobs(db, [f.job_id])
        message = Spool(get_settings().spool).redact(f"{exc.__class__.__name__}: {exc}", {f.path: f.name})
        f.state, f.error, f.updated_at = FileState.queued, message, utcnow()
        ref = tasks.FileRef(f.id, f.job_id, f.name)
        attempts = f.attempts
        position = tasks.positions(db, [f.job_id]).get(f.job_id, 0)
    log.warning("file %s (%s) raised %s on attempt %d of %d; trying it again alone", ref.id, ref.name, message,
                attempts, get_settings().max_attempts)
    tasks.send_files([ref], start=position)


def why_given_up(f: File) -> str:
    """What a file given up on died of: the error it last raised, or its process's death."""
    return f"last error: {f.error}" if f.error else DIED


def gave_up(f: File) -> str | None:
    return claims.gave_up(f, why_given_up(f))
