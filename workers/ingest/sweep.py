"""Orphans on the spool's decoded audio and batches: what a job's end did not remove (a worker that died
between the commit and the cleaning, a cancelled job whose ingest wrote on, a batch given up on). The
reconciler runs it; shared.sweeps does the same for upload folders.

A job's audio folder goes when the job has ended or has no row; a batch's files when the batch has ended or
has no row. Nothing changed within the deadline is touched: a batch being written has no committed row yet.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Batch, BatchState, Job, JobState
from shared.storage import Spool

log = logging.getLogger(__name__)
ENDED_JOB = (JobState.done, JobState.failed, JobState.cancelled)
ENDED_BATCH = (BatchState.done, BatchState.failed)


def sweep() -> dict[str, int]:
    """Remove the audio of ended or unknown jobs and the files of ended or unknown batches; how many went."""
    settings = get_settings()
    spool = Spool(settings.spool)
    old = time.time() - settings.task_deadline_seconds
    folders = {job: path for job, path in spool.audio_folders().items() if _mtime(path) < old}
    batch_files = [p for p in spool.batch_files() if _mtime(p) < old]
    batch_ids = {_batch_id(p) for p in batch_files}
    with session_scope() as db:
        live = set(db.scalars(select(Job.id).where(Job.id.in_(list(folders)), Job.state.not_in(ENDED_JOB)))) \
            if folders else set()
        known = dict(db.execute(select(Batch.id, Batch.state).where(Batch.id.in_(list(batch_ids)))).all()) \
            if batch_ids else {}
    jobs = 0
    for job_id, path in folders.items():
        if job_id not in live:
            shutil.rmtree(path, ignore_errors=True)
            jobs += 1
    files = 0
    for path in batch_files:
        state = known.get(_batch_id(path))
        if state is None or state in ENDED_BATCH:
            path.unlink(missing_ok=True)
            files += 1
    if jobs or files:
        log.info("spool sweep: removed the decoded audio of %d ended or unknown job(s) and %d file(s) of ended "
                 "or unknown batches", jobs, files)
    return {"jobs": jobs, "batch_files": files}


def _batch_id(path: Path) -> str:
    """`<batch>.npz` and `<batch>.f32` name their batch; a temporary `.tmp-*` file names none."""
    return "" if path.name.startswith(".tmp-") else path.name.split(".", 1)[0]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
