"""GPU stage, queue "gpu": one worker process per device runs a packed batch and writes results.

The parent Celery process never touches CUDA: models load in the pool child on its first task
(or at start, through worker_process_init), once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy import delete, insert, or_, select, update

from shared.config import get_settings
from shared.db import session_scope
from shared.schema import (Batch, BatchState, Job, JobState, ModelVersion, Result, Segment, SegmentState,
                           utcnow)
from shared.storage import Spool, read_batch, remove_batch
from workers import progress
from workers.celery_app import app
from workers.engine import get_engine

log = logging.getLogger(__name__)


@worker_process_init.connect
def _load_models(**_kwargs):
    if os.environ.get("SPEECHQ_WORKER_ROLE") == "gpu":
        get_engine(get_settings())


class WriteBehind:
    """Stores one batch's results on a side thread while the GPU runs the next batch.

    At most one write is in flight: a task first waits for the previous one. The task's message is
    acked when the task returns, which may be before its rows are committed; if the process dies in
    between, the batch stays `running` in the database and the reconciler re-enqueues it after the
    deadline (the database, not the broker, is the record of what is done).
    """

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speechq-write")
        self._pending: Future | None = None
        self._lock = threading.Lock()

    def submit(self, fn, *args) -> None:
        with self._lock:
            self.wait()
            self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # the batch stays `running`; the reconciler retries it
                log.exception("writing a batch's results failed; the reconciler will run it again")


_write_behind = WriteBehind()


@worker_process_shutdown.connect
def _flush_writes(**_kwargs):
    _write_behind.wait()


def model_version_id(db, prov) -> int:
    row = db.scalar(select(ModelVersion).where(ModelVersion.name == prov.name, ModelVersion.sha256 == prov.sha256))
    if row is None:
        row = ModelVersion(name=prov.name, revision=prov.revision, sha256=prov.sha256,
                           random_weights=prov.random_weights)
        db.add(row)
        db.flush()
    return row.id


def claim_batch(batch_id: str, worker: str):
    s = get_settings()
    stale = utcnow() - timedelta(seconds=s.task_deadline_seconds)
    with session_scope() as db:
        ok = db.execute(
            update(Batch).where(Batch.id == batch_id, or_(
                Batch.state == BatchState.queued,
                (Batch.state == BatchState.running) & (Batch.updated_at < stale)))
            .values(state=BatchState.running, attempts=Batch.attempts + 1, worker=worker, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if not ok:
            return None
        batch = db.get(Batch, batch_id)
        if batch.attempts > s.max_attempts:
            fail_batch(db, batch, f"gave up after {s.max_attempts} attempts")
            return None
        db.expunge(batch)
        return batch


def fail_batch(db, batch: Batch, message: str) -> None:
    log.error("batch %s failed: %s", batch.id, message)
    job_ids = set(db.scalars(select(Segment.job_id).where(Segment.batch_id == batch.id)))
    progress.lock_jobs(db, job_ids)
    batch.state, batch.error = BatchState.failed, message
    db.execute(update(Segment).where(Segment.batch_id == batch.id).values(state=SegmentState.failed)
               .execution_options(synchronize_session=False))
    progress.settle(db, job_ids)


@app.task(bind=True, name="workers.gpu.run_batch")
def run_batch(self, batch_id: str) -> None:
    settings = get_settings()
    t0 = time.perf_counter()
    batch = claim_batch(batch_id, self.request.hostname or "?")
    if batch is None:
        return
    t1 = time.perf_counter()
    try:
        data = read_batch(Path(batch.path))
    except (OSError, ValueError) as exc:
        with session_scope() as db:
            fail_batch(db, db.get(Batch, batch_id), f"batch audio unreadable: {exc}")
        return
    offsets = data["offsets"]
    wavs = [data["audio"][offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    ids = [str(x) for x in data["segment_ids"]]
    engine = get_engine(settings)
    t2 = time.perf_counter()
    try:
        flight = engine.submit(wavs, [str(x) for x in data["languages"]], [bool(x) for x in data["itn"]])
    except RuntimeError as exc:
        _exit_on_cuda_error(exc)
        raise
    t3 = time.perf_counter()
    self.send_event("task-progress", batch=batch_id, segments=len(ids), audio_seconds=batch.audio_seconds,
                    seconds=round(t3 - t0, 3))
    timing = (t0, t1, t2, t3)
    if settings.gpu_write_behind:
        # the task returns while the device works: the next batch is claimed, read and queued meanwhile
        _write_behind.submit(store, batch, ids, flight, engine, timing)
    else:
        store(batch, ids, flight, engine, timing)


def _exit_on_cuda_error(exc: RuntimeError) -> None:
    if "CUDA" in str(exc) or "cuda" in str(exc):
        log.critical("CUDA error, exiting so that the supervisor restarts this worker: %s", exc)
        os._exit(70)  # unacked messages are redelivered; a batch left `running` is re-run by the reconciler


def store(batch: Batch, ids: list[str], flight, engine, timing: tuple[float, float, float, float]) -> None:
    t0, t1, t2, t3 = timing
    settings = get_settings()
    try:
        results = flight.results()
    except RuntimeError as exc:
        _exit_on_cuda_error(exc)
        raise
    t4 = time.perf_counter()
    ended = write_results(batch.id, ids, results, engine)
    remove_batch(Path(batch.path))
    spool = Spool(settings.spool)
    for job_id in ended:
        spool.clean_job(job_id)
    t5 = time.perf_counter()
    log.info("batch %s: %d segments, %.1f s audio; claim %.3f s, read %.3f s, launch %.3f s, gpu %.3f s, "
             "wait %.3f s, write %.3f s", batch.id, len(ids), batch.audio_seconds, t1 - t0, t2 - t1, t3 - t2,
             flight.device_seconds(), t4 - t3, t5 - t4)


def write_results(batch_id: str, ids: list[str], results, engine) -> list[str]:
    """One transaction: results replace any earlier ones for these segments (idempotent)."""
    with session_scope() as db:
        jobs = dict(db.execute(select(Segment.id, Segment.job_id).where(Segment.id.in_(ids))).all())
        progress.lock_jobs(db, jobs.values())
        cancelled = set(db.scalars(select(Job.id).where(Job.id.in_(set(jobs.values())),
                                                        Job.state == JobState.cancelled)))
        asr_id = model_version_id(db, engine.provenance["asr"])
        emo_id = model_version_id(db, engine.provenance["emotion"])
        rows = [
            {"segment_id": sid, "job_id": jobs[sid], "text": r.transcript.text, "language": r.transcript.language,
             "emotion": r.transcript.emotion, "event": r.transcript.event, "itn": r.transcript.itn,
             "emotion2vec_label": r.emotion.label, "emotion2vec_scores": r.emotion.scores,
             "asr_model_id": asr_id, "emotion_model_id": emo_id}
            for sid, r in zip(ids, results) if sid in jobs and jobs[sid] not in cancelled
        ]
        db.execute(delete(Result).where(Result.segment_id.in_(ids)))
        if rows:
            db.execute(insert(Result), rows)
        db.execute(update(Segment).where(Segment.id.in_(ids)).values(state=SegmentState.done)
                   .execution_options(synchronize_session=False))
        db.execute(update(Batch).where(Batch.id == batch_id).values(state=BatchState.done, updated_at=utcnow()))
        return progress.settle(db, jobs.values())
