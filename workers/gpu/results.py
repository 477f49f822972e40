"""A batch's results into the database: one transaction per batch, keyed by segment so that a
redelivered batch overwrites rather than duplicates (ARCHITECTURE.md, contract 3)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import delete, insert, select, update

from shared import progress
from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Batch, BatchState, Job, JobState, ModelVersion, Result, Segment, SegmentState, utcnow
from shared.storage import Spool, remove_batch
from workers.gpu.engine import exit_on_cuda_error

log = logging.getLogger(__name__)


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


def model_version_id(db, prov) -> int:
    row = db.scalar(select(ModelVersion).where(ModelVersion.name == prov.name, ModelVersion.sha256 == prov.sha256))
    if row is None:
        row = ModelVersion(**prov.record())
        db.add(row)
        db.flush()
    return row.id


def store(batch: Batch, ids: list[str], flight, engine, timing: tuple[float, float, float, float]) -> None:
    t0, t1, t2, t3 = timing
    settings = get_settings()
    with exit_on_cuda_error():
        results = flight.results()
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


def file_words(words, start_s: float) -> list[dict] | None:
    """A segment's word timings in seconds of the file (ms precision), as results.words stores them."""
    if words is None:
        return None
    return [{"w": w.text, "start_s": round(start_s + w.start_s, 3), "end_s": round(start_s + w.end_s, 3)}
            for w in words]


def write_results(batch_id: str, ids: list[str], results, engine) -> list[str]:
    """One transaction: results replace any earlier ones for these segments (idempotent)."""
    with session_scope() as db:
        found = db.execute(select(Segment.id, Segment.job_id, Segment.start_ms).where(Segment.id.in_(ids))).all()
        jobs = {sid: job_id for sid, job_id, _ in found}
        starts = {sid: start_ms / 1000 for sid, _, start_ms in found}
        progress.lock_jobs(db, jobs.values())
        cancelled = set(db.scalars(select(Job.id).where(Job.id.in_(set(jobs.values())),
                                                        Job.state == JobState.cancelled)))
        asr_id = model_version_id(db, engine.provenance["asr"])
        emo_id = model_version_id(db, engine.provenance["emotion"])
        rows = [
            {"segment_id": sid, "job_id": jobs[sid], "text": r.transcript.text, "language": r.transcript.language,
             "emotion": r.transcript.emotion, "event": r.transcript.event, "itn": r.transcript.itn,
             "emotion2vec_label": r.emotion.label, "emotion2vec_scores": r.emotion.scores,
             "words": file_words(r.transcript.words, starts[sid]), "asr_model_id": asr_id, "emotion_model_id": emo_id}
            for sid, r in zip(ids, results) if sid in jobs and jobs[sid] not in cancelled
        ]
        db.execute(delete(Result).where(Result.segment_id.in_(ids)))
        if rows:
            db.execute(insert(Result), rows)
        db.execute(update(Segment).where(Segment.id.in_(ids)).values(state=SegmentState.done)
                   .execution_options(synchronize_session=False))
        db.execute(update(Batch).where(Batch.id == batch_id).values(state=BatchState.done, updated_at=utcnow()))
        return progress.settle(db, jobs.values())
