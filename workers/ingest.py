"""CPU stage, queue "ingest": probe, decode each channel, segment with FSMN-VAD (several calls at once), then pack."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import or_, select, update

from shared import audio, vad
from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Channel, File, FileState, Job, JobState, Segment, utcnow
from shared.storage import SAMPLE_RATE, Spool, read_raw
from workers import packing, progress
from workers.celery_app import app

log = logging.getLogger(__name__)


def claim_file(file_id: str) -> File | None:
    """Move a file to 'ingesting' if it is queued, or stuck past the deadline. None if not ours."""
    s = get_settings()
    stale = utcnow() - timedelta(seconds=s.task_deadline_seconds)
    with session_scope() as db:
        job_id = db.scalar(select(File.job_id).where(File.id == file_id))
        if job_id is None:
            return None
        progress.lock_jobs(db, [job_id])  # job row first, then the file: one lock order everywhere
        claimed = db.execute(
            update(File)
            .where(File.id == file_id,
                   or_(File.state == FileState.queued,
                       (File.state == FileState.ingesting) & (File.updated_at < stale)))
            .values(state=FileState.ingesting, attempts=File.attempts + 1, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if not claimed:
            return None
        f = db.get(File, file_id)
        job = db.get(Job, f.job_id)
        if job.state == JobState.cancelled:
            f.state = FileState.cancelled
            return None
        if f.attempts > s.max_attempts:
            _fail(db, f, f"gave up after {s.max_attempts} attempts (the worker died on this file)")
            return None
        if job.state == JobState.queued:
            job.state, job.started_at = JobState.running, utcnow()
        original = _earlier_copy(db, f)
        if original is not None:  # same audio already in this job: process once, report twice
            f.duplicate_of, f.state = original, FileState.segmented
            log.info("file %s (%s) has the same audio as %s: not processed again", f.id, f.name, original)
            progress.settle(db, [f.job_id])
            return None
        db.expunge(f)
        return f


def _earlier_copy(db, f: File) -> str | None:
    if not f.sha256:
        return None
    return db.scalar(
        select(File.id).where(
            File.job_id == f.job_id, File.sha256 == f.sha256, File.id != f.id, File.duplicate_of.is_(None),
            or_(File.created_at < f.created_at, (File.created_at == f.created_at) & (File.id < f.id)))
        .order_by(File.created_at, File.id).limit(1))


def _fail(db, f: File, message: str) -> None:
    log.warning("file %s (%s) failed: %s", f.id, f.name, message)
    progress.lock_jobs(db, [f.job_id])
    f.state, f.error = FileState.failed, message
    progress.settle(db, [f.job_id])


def check(f: File, settings) -> audio.AudioInfo:
    info = audio.probe(Path(f.path))
    if info.duration_s > settings.max_file_seconds:
        raise audio.AudioError(
            f"recording too long: {info.duration_s:.0f} s (limit SPEECHQ_MAX_FILE_SECONDS={settings.max_file_seconds:.0f})")
    if info.channels < 1:
        raise audio.AudioError("audio stream has no channels")
    return info


def decode_to_spool(f: File, info: audio.AudioInfo, spool: Spool) -> tuple[list[Path], int]:
    """Every channel to its own raw file on the spool, block by block. Returns (paths, samples)."""
    paths = [spool.channel_audio(f.job_id, f"{f.id}-{i}") for i in range(info.channels)]
    outs = [open(p, "wb") for p in paths]
    samples = 0
    try:
        for block in audio.stream(Path(f.path), info):
            for out, channel in zip(outs, block):
                out.write(channel.tobytes())
            samples += block.shape[1]
    except BaseException:
        for p in paths:
            p.unlink(missing_ok=True)
        raise
    finally:
        for out in outs:
            out.close()
    return paths, samples


@dataclass
class Decoded:
    file: File
    info: audio.AudioInfo
    paths: list[Path]
    samples: int


def enqueue(file_ids: list[str]) -> None:
    """Send files to the ingest queue in groups of at most SPEECHQ_INGEST_GROUP_FILES, spread evenly,
    so that one worker runs the VAD on the channels of several calls in one batched pass."""
    if not file_ids:
        return
    size = get_settings().ingest_group_files
    groups = -(-len(file_ids) // size)
    for i in range(groups):
        ingest_files.apply_async((file_ids[i::groups],), queue="ingest")


@app.task(bind=True, name="workers.ingest.ingest_files")
def ingest_files(self, file_ids: list[str]) -> None:
    """Decode each file of the group to the spool (a bad file fails alone), run every channel of
    every decoded file through FSMN-VAD together, then store each file in its own transaction."""
    settings = get_settings()
    spool = Spool(settings.spool)
    decoded: list[Decoded] = []
    for file_id in file_ids:
        f = claim_file(file_id)
        if f is None:
            continue
        try:
            info = check(f, settings)
            paths, samples = decode_to_spool(f, info, spool)
            if samples < 1:
                raise audio.AudioError("no audio samples decoded (zero-length audio)")
        except audio.AudioError as exc:
            with session_scope() as db:
                _fail(db, db.get(File, file_id), str(exc))
            continue
        decoded.append(Decoded(f, info, paths, samples))
    if not decoded:
        return
    streams = [read_raw(p, vad.CHUNK_SAMPLES) for d in decoded for p in d.paths]
    spans = vad.segments_many(streams, settings.vad_model_dir, int(settings.max_segment_seconds * 1000))
    at = 0
    for d in decoded:
        total = _store(d, spans[at:at + len(d.paths)], settings)
        at += len(d.paths)
        self.send_event("task-progress", file=d.file.name, channels=len(d.paths), segments=total)
    packing.pack_pending()


def _store(d: Decoded, spans_per_channel: list[list[tuple[int, int]]], settings) -> int:
    """Channels and segments of one file, in one transaction; returns the number of segments."""
    f, info, samples = d.file, d.info, d.samples
    with session_scope() as db:
        labels = settings.labels(db.get(Job, f.job_id).channel_labels)
    rows = []
    for index, (path, spans) in enumerate(zip(d.paths, spans_per_channel)):
        label = labels[index] if index < len(labels) else f"ch{index}"
        channel = Channel(file_id=f.id, index=index, label=label, duration_s=samples / SAMPLE_RATE,
                          speech_s=sum(e - s for s, e in spans) / 1000.0)
        if spans:
            channel.audio_path = str(path)
        else:
            path.unlink(missing_ok=True)
        rows.append((channel, spans))
    total = sum(len(spans) for _, spans in rows)
    with session_scope() as db:
        progress.lock_jobs(db, [f.job_id])
        db.query(Channel).filter(Channel.file_id == f.id).delete()  # a retried ingest starts clean
        fr = db.get(File, f.id)
        fr.format, fr.sample_rate, fr.num_channels = f"{info.format}/{info.codec}", info.sample_rate, info.channels
        fr.duration_s = samples / SAMPLE_RATE
        for channel, spans in rows:
            db.add(channel)
            db.flush()
            db.add_all(Segment(job_id=f.job_id, file_id=f.id, channel_id=channel.id, start_ms=s, end_ms=e)
                       for s, e in spans)
        fr.state = FileState.segmented
        if not total:
            fr.state, fr.error = FileState.done, "no speech detected in any channel"
        progress.settle(db, [f.job_id])
    log.info("ingested %s: %d channel(s), %.1f s, %d segments", f.name, len(rows), samples / SAMPLE_RATE, total)
    return total


@app.task(name="workers.ingest.pack")
def pack(flush: bool = False) -> None:
    packing.pack_pending(force_flush=flush)
