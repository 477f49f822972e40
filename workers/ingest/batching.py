"""Turn pending segments of all running jobs into GPU batches (claim-check: audio to the spool).

Segments from many files and jobs share a batch (length bucketing). A partial batch waits for
more segments until its jobs have nothing left to ingest, or it has waited batch_flush_seconds; until a
job's first file has ended, its segments do not wait: its first results come as soon as the GPU can give them.
A batch's priority on the GPU queue is that of the least advanced of its jobs (tasks.priority of the
job's files ended so far), so a new job's first batch overtakes the queued batches of a long one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import redis
from sqlalchemy import exists, select, update

from shared import tasks
from shared.config import get_settings
from shared.db import read_scope, session_scope
from shared.schema import Batch, Channel, File, FileState, Job, JobState, Segment, SegmentState, new_id, utcnow
from shared.storage import SAMPLE_RATE, Spool, channel_samples, remove_batch
from workers.ingest.lengths import Item, by_length

log = logging.getLogger(__name__)
LOCK = "speechq:batching-lock"


def _lock():
    client = redis.Redis.from_url(get_settings().broker)
    return client.lock(LOCK, timeout=300, blocking_timeout=120)


def batch_pending(force_flush: bool = False) -> list[str]:
    with _lock():
        return _batch(force_flush)


def _batch(force_flush: bool) -> list[str]:
    settings = get_settings()
    with read_scope() as db:
        rows = db.execute(
            select(Segment.id, Segment.job_id, Segment.start_ms, Segment.end_ms, Segment.created_at)
            .join(Job, Job.id == Segment.job_id)
            .where(Segment.state == SegmentState.pending, Job.state == JobState.running)
        ).all()
        if not rows:
            return []
        pending_jobs = {r.job_id for r in rows}
        busy_jobs = set(db.scalars(  # per job, through the (job_id, state) index: not a scan of every file
            select(File.job_id).where(File.job_id.in_(pending_jobs),
                                      File.state.in_((FileState.queued, FileState.ingesting))).distinct()))
        at = tasks.positions(db, [r.job_id for r in rows])
    items = [Item(r.id, (r.end_ms - r.start_ms) / 1000.0) for r in rows]
    batches, leftover = by_length(items, settings.batch_seconds)
    if leftover:
        by_id = {r.id: r for r in rows}
        oldest = min(by_id[i.id].created_at for i in leftover)
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=utcnow().tzinfo)
        waited = utcnow() - oldest > timedelta(seconds=settings.batch_flush_seconds)
        if not (force_flush or waited or not any(by_id[i.id].job_id in busy_jobs for i in leftover)):
            leftover = [i for i in leftover if at.get(by_id[i.id].job_id, 0) == 0]  # no file of its job ended yet
        if leftover:
            more, _ = by_length(leftover, settings.batch_seconds, flush=True)
            batches += more
    job_of = {r.id: r.job_id for r in rows}
    made = [(_make_batch([i.id for i in b]), min(at.get(job_of[i.id], 0) for i in b)) for b in batches]
    created = [batch_id for batch_id, _ in made if batch_id]
    for batch_id, position in made:
        if batch_id:  # by name: the CPU side never imports the GPU worker's code
            tasks.send_batch(batch_id, position=position)  # a batch goes at the priority of its least advanced job
    if created:
        release_channels(created)
        log.info("cut %d segments into %d batch(es)", sum(len(b) for b in batches), len(created))
    return created


def release_channels(batch_ids: list[str]) -> int:
    """Remove from the spool the decoded audio of the batches' channels that no pending segment needs any
    more: a batch file holds its segments' own audio, so a job keeps on the spool what is not batched yet, not
    every channel it decoded until it ends (a 100 h job held 43 GiB, and a job past SPEECHQ_MAX_JOB_SPOOL_BYTES
    failed its later files). Runs under the batching lock, the only reader of channel audio after ingest.
    Returns the number of files removed."""
    if not batch_ids:
        return 0
    with read_scope() as db:
        channels = select(Segment.channel_id).where(Segment.batch_id.in_(batch_ids)).distinct().scalar_subquery()
        waiting = exists().where(Segment.channel_id == Channel.id, Segment.state == SegmentState.pending)
        paths = db.scalars(select(Channel.audio_path).where(Channel.id.in_(channels), ~waiting,
                                                            Channel.audio_path.is_not(None))).all()
    for path in paths:
        Path(path).unlink(missing_ok=True)
    return len(paths)


def positions(db, batch_ids: list[str]) -> dict[str, int]:
    """Each batch's position for its priority: that of the least advanced job among its segments'."""
    if not batch_ids:
        return {}
    pairs = db.execute(select(Segment.batch_id, Segment.job_id).where(Segment.batch_id.in_(batch_ids))
                       .distinct()).all()
    at = tasks.positions(db, [job_id for _, job_id in pairs])
    out: dict[str, int] = {}
    for batch_id, job_id in pairs:
        position = at.get(job_id, 0)
        out[batch_id] = min(out.get(batch_id, position), position)
    return out


def _make_batch(segment_ids: list[str]) -> str | None:
    """Write the segments' audio to the spool as one batch file, then record the batch and mark its segments.
    The file is written outside any write transaction: on SQLite the write lock is held only for the few
    statements at the end, not for the audio's tens of megabytes (the GPU worker's claims and the other
    ingest processes' commits would queue behind it). Returns None if the segments are no longer pending."""
    settings = get_settings()
    spool = Spool(settings.spool)
    with read_scope() as db:
        segs = db.execute(
            select(Segment.id, Segment.start_ms, Segment.end_ms, Channel.audio_path, Job.language, Job.use_itn)
            .join(Channel, Channel.id == Segment.channel_id).join(Job, Job.id == Segment.job_id)
            .where(Segment.id.in_(segment_ids), Segment.state == SegmentState.pending)
        ).all()
    if not segs:
        return None
    pieces, by_path = [], defaultdict(list)
    for s in segs:
        by_path[s.audio_path].append(s)
    ordered = []
    for path, group in by_path.items():
        samples = channel_samples(path)
        for s in group:
            a, b = s.start_ms * SAMPLE_RATE // 1000, s.end_ms * SAMPLE_RATE // 1000
            pieces.append(samples[a:b])
            ordered.append(s)
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    batch_id = new_id()
    path = spool.batch(batch_id)
    spool.write_batch(
        path,
        audio=pieces,
        offsets=np.concatenate(([0], np.cumsum(lengths))),
        segment_ids=np.array([s.id for s in ordered]),
        languages=np.array([s.language for s in ordered]),
        itn=np.array([bool(s.use_itn) for s in ordered]),
    )
    try:
        with session_scope() as db:
            db.add(Batch(id=batch_id, path=str(path), num_segments=len(ordered),
                         audio_seconds=float(lengths.sum()) / SAMPLE_RATE,
                         padded_seconds=float(lengths.max()) * len(lengths) / SAMPLE_RATE))
            db.flush()
            claimed = db.execute(
                update(Segment).where(Segment.id.in_([s.id for s in ordered]), Segment.state == SegmentState.pending)
                .values(state=SegmentState.batched, batch_id=batch_id).execution_options(synchronize_session=False)
            ).rowcount
            if claimed != len(ordered):  # some were cancelled or batched meanwhile: the next pass cuts the rest
                raise _Changed(f"{len(ordered) - claimed} of {len(ordered)} segments changed state")
    except BaseException as exc:
        remove_batch(path)
        if isinstance(exc, _Changed):
            log.warning("batch not made: %s; rolled back", exc)
            return None
        raise
    return batch_id


class _Changed(Exception):
    """The segments read for a batch were no longer all pending when it was recorded."""
