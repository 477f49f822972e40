"""The GPU task, queue "gpu": one worker process per device runs batch after batch through the engine.

The worker runs in the solo pool (api.launcher): one process loads the models at start (through
worker_process_init, which the solo pool sends in the worker itself) and runs every batch, so a crash ends
the worker and its supervisor restarts it; nothing forks after CUDA is initialised.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown
from sqlalchemy import select, update

from shared import claims, heartbeat, progress, tasks
from shared.config import get_settings
from shared.db import session_scope
from shared.models import weights
from shared.models.registry import one_line
from shared.schema import Batch, BatchState, File, FileState, Job, JobState, Segment, SegmentState, utcnow
from shared.storage import Spool, read_batch, remove_batch
from shared.tasks import app
from workers.gpu import results
from workers.gpu.engine import Engine, exit_on_cuda_error, get_engine
from workers.lifecycle import worker_role

log = logging.getLogger(__name__)
_heartbeat: heartbeat.Heartbeat | None = None
_load_error: str | None = None  # why this process's models did not load; its batches fail with it


@worker_process_init.connect
def _load_models(sender=None, **_kwargs):
    """Load at start, in the pool child, and say so on the heartbeat: loading, then ready or error."""
    global _heartbeat
    if worker_role() != "gpu":
        return
    hostname = str(sender or os.uname().nodename)
    _heartbeat = heartbeat.Heartbeat(get_settings(), "gpu", hostname, state="loading").start()
    load_engine(hostname)


def load_engine(hostname: str) -> Engine | None:
    """This process's engine; None once loading has failed (the failure is kept, published on the
    heartbeat and set on the jobs whose batches wait, rather than retried on every batch)."""
    global _load_error
    if _load_error is not None:
        return None
    settings = get_settings()
    try:
        engine = get_engine(settings)
    except Exception as exc:  # noqa: BLE001 - whatever stops the models loading is reported the same way
        _load_error = f"GPU worker {hostname} cannot load its models: {_describe(exc, settings)}"
        log.error("%s; its batches fail with this error until the model folders are fixed and the worker "
                  "restarted", _load_error, exc_info=True)
        if _heartbeat is not None:
            _heartbeat.update(state="error", error=_load_error)
        _mark_waiting_jobs(_load_error)
        return None
    if _heartbeat is not None:
        _heartbeat.update(state="ready", error=None, models=[p.record() for p in engine.provenance.values()])
    return engine


def _describe(exc: Exception, settings) -> str:
    """The failure in one line that names the model folder (funasr's own errors name none)."""
    folders = [Path(settings.sensevoice_dir), Path(settings.emotion2vec_dir)]
    detail = one_line(exc, 600)
    if any(str(f) in detail for f in folders):
        return detail
    for folder in folders:
        try:
            weights.load_state(folder / "model.pt")
        except Exception:  # noqa: BLE001 - this is the checkpoint that failed
            return f"{folder / 'model.pt'} does not open as a checkpoint (corrupt or incomplete?): {one_line(exc, 160)}"
    return f"{detail} (model folders: {', '.join(map(str, folders))})"


def _mark_waiting_jobs(message: str) -> None:
    """The jobs whose batches wait in the queue carry the error at once, before their batches fail."""
    try:
        with session_scope() as db:
            waiting = select(Segment.job_id).join(Batch, Segment.batch_id == Batch.id).where(
                Batch.state == BatchState.queued)
            db.execute(update(Job).where(Job.id.in_(waiting), Job.state.in_((JobState.queued, JobState.running)),
                                         Job.error.is_(None))
                       .values(error=message).execution_options(synchronize_session=False))
    except Exception:  # noqa: BLE001 - the batches still fail with the error when they arrive
        log.exception("could not set the model-load error on the waiting jobs")


_write_behind = results.WriteBehind()


@worker_process_shutdown.connect  # a prefork pool child
@worker_shutdown.connect  # the solo pool: the worker itself
def _flush_writes(**_kwargs):
    _write_behind.wait()
    if _heartbeat is not None:
        _heartbeat.stop()


def claim_batch(batch_id: str, worker: str):
    """The batch, claimed (None if another worker has it or it gave up), with the ids of its segments
    whose job asked for word timings."""
    with session_scope() as db:
        if not claims.claim(db, Batch, batch_id, BatchState.queued, BatchState.running, worker=worker,
                            started_at=utcnow()):  # done minus started: the GPU worker's busy time (/metrics)
            return None
        batch = db.get(Batch, batch_id)
        error = claims.gave_up(batch, "its worker died on it each time, or its results could not be stored")
        if error:
            fail_batch(db, batch, error)
            remove_batch(Path(batch.path))
            return None
        timed = set(db.scalars(select(Segment.id).join(Job, Job.id == Segment.job_id)
                               .where(Segment.batch_id == batch_id, Job.word_timings.is_(True))))
        db.expunge(batch)
        return batch, timed


def fail_batch(db, batch: Batch, message: str) -> None:
    log.error("batch %s failed: %s", batch.id, message)
    job_ids = set(db.scalars(select(Segment.job_id).where(Segment.batch_id == batch.id)))
    progress.lock_jobs(db, job_ids)
    batch.state, batch.error = BatchState.failed, message
    db.execute(update(Segment).where(Segment.batch_id == batch.id).values(state=SegmentState.failed)
               .execution_options(synchronize_session=False))
    progress.settle(db, job_ids)


def fail_unloadable(db, batch: Batch, message: str) -> list[str]:
    """A batch this worker cannot run because its models did not load: the batch, its segments and their
    files fail with the message, and the jobs carry it. Returns the jobs that ended."""
    log.error("batch %s failed: %s", batch.id, message)
    rows = db.execute(select(Segment.job_id, Segment.file_id).where(Segment.batch_id == batch.id)).all()
    job_ids, file_ids = {j for j, _ in rows}, {f for _, f in rows}
    progress.lock_jobs(db, job_ids)
    batch.state, batch.error = BatchState.failed, message
    db.execute(update(Segment).where(Segment.batch_id == batch.id).values(state=SegmentState.failed)
               .execution_options(synchronize_session=False))
    db.execute(update(File).where(File.id.in_(file_ids), File.state == FileState.segmented)
               .values(state=FileState.failed, error=message, updated_at=utcnow())
               .execution_options(synchronize_session=False))
    db.execute(update(Job).where(Job.id.in_(job_ids), Job.error.is_(None)).values(error=message)
               .execution_options(synchronize_session=False))
    return progress.settle(db, job_ids)


@app.task(bind=True, name=tasks.RUN_BATCH)
def run_batch(self, batch_id: str) -> None:
    settings = get_settings()
    t0 = time.perf_counter()
    hostname = self.request.hostname or "?"
    claimed = claim_batch(batch_id, hostname)
    if claimed is None:
        return
    batch, timed = claimed
    engine = load_engine(hostname)
    if engine is None:
        with session_scope() as db:
            ended = fail_unloadable(db, db.get(Batch, batch_id), _load_error)
        remove_batch(Path(batch.path))
        for job_id in ended:
            Spool(settings.spool).clean_job(job_id)
        return
    t1 = time.perf_counter()
    try:
        data = read_batch(Path(batch.path))
    except (OSError, ValueError) as exc:
        with session_scope() as db:
            fail_batch(db, db.get(Batch, batch_id), f"batch audio unreadable: {exc}")
        remove_batch(Path(batch.path))
        return
    offsets = data["offsets"]
    wavs = [data["audio"][offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    ids = [str(x) for x in data["segment_ids"]]
    t2 = time.perf_counter()
    with exit_on_cuda_error():
        flight = engine.submit(wavs, [str(x) for x in data["languages"]], [bool(x) for x in data["itn"]],
                               [sid in timed for sid in ids])
    t3 = time.perf_counter()
    self.send_event("task-progress", batch=batch_id, segments=len(ids), audio_seconds=batch.audio_seconds,
                    seconds=round(t3 - t0, 3))
    timing = (t0, t1, t2, t3)
    if settings.gpu_write_behind:
        # the task returns while the device works: the next batch is claimed, read and queued meanwhile
        _write_behind.submit(results.store, batch, ids, flight, engine, timing)
    else:
        results.store(batch, ids, flight, engine, timing)
