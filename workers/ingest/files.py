"""The ingest task: probe, decode each channel, segment with FSMN-VAD (several calls at once), then batch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import or_, select

from shared import claims, progress, tasks
from shared.config import get_settings
from shared.db import read_scope, session_scope
from shared.schema import Channel, File, FileState, Job, JobState, Segment, utcnow
from shared.analytics.loudness import segment_levels
from shared.storage import SAMPLE_RATE, Spool, channel_samples, read_raw
from shared.tasks import app
from workers.ingest import batching, decode, quotas, retries

log = logging.getLogger(__name__)


def claim_file(file_id: str, failures: list[tuple[str, str]] | None = None) -> File | None:
    """Move a file to 'ingesting' if it is queued, or stuck past the deadline. None if not ours.
    A file given up on (too many attempts) is failed and appended to `failures` as (name, error)."""
    with session_scope() as db:
        job_id = db.scalar(select(File.job_id).where(File.id == file_id))
        if job_id is None:
            return None
        progress.lock_jobs(db, [job_id])  # job row first, then the file: one lock order everywhere
        if not claims.claim(db, File, file_id, FileState.queued, FileState.ingesting):
            return None
        f = db.get(File, file_id)
        job = db.get(Job, f.job_id)
        if job.state == JobState.cancelled:
            f.state = FileState.cancelled
            return None
        error = retries.gave_up(f)
        if error:
            message = _fail(db, f, error)
            if failures is not None:
                failures.append((f.name, message))
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
            File.state != FileState.skipped,
            or_(File.created_at < f.created_at, (File.created_at == f.created_at) & (File.id < f.id)))
        .order_by(File.created_at, File.id).limit(1))


def _fail(db, f: File, message: str) -> str:
    """Record the failure on the row, in words that name the file as submitted; returns them."""
    message = Spool(get_settings().spool).redact(message, {f.path: f.name})
    log.warning("file %s (%s) failed: %s", f.id, f.name, message)
    progress.lock_jobs(db, [f.job_id])
    f.state, f.error = FileState.failed, message
    progress.settle(db, [f.job_id])
    return message


def check(f: File, settings) -> decode.AudioInfo:
    info = decode.probe(Path(f.path))
    if info.sample_rate < settings.min_sample_rate:  # checked before the length, which a forged rate inflates
        raise decode.AudioError(f"sample rate {info.sample_rate} Hz, under the lowest of {settings.min_sample_rate} Hz "
                                "(SPEECHQ_MIN_SAMPLE_RATE): not a speech recording, or its header is damaged")
    if info.duration_s > settings.max_file_seconds:
        raise decode.AudioError(f"recording too long: {info.duration_s:.0f} s "
                               f"(limit SPEECHQ_MAX_FILE_SECONDS={settings.max_file_seconds:.0f})")
    if info.channels < 1:
        raise decode.AudioError("audio stream has no channels")
    if info.channels > settings.max_channels:
        raise decode.AudioError(f"{info.channels} channels, over the limit of {settings.max_channels} "
                                "(SPEECHQ_MAX_CHANNELS)")
    return info


def decode_to_spool(f: File, info: decode.AudioInfo, spool: Spool) -> tuple[list[Path], int]:
    """Every channel to its own raw file on the spool, block by block. Returns (paths, samples)."""
    paths = [spool.channel_audio(f.job_id, f"{f.id}-{i}") for i in range(info.channels)]
    outs = [open(p, "wb") for p in paths]
    samples = 0
    try:
        budget = quotas.file_allowance(spool, f.job_id, get_settings())
        for block in decode.stream(Path(f.path), info, max_bytes=budget):
            for out, channel in zip(outs, block):  # each row of a (channels, samples) block is contiguous
                out.write(memoryview(np.ascontiguousarray(channel, dtype="<f4")).cast("B"))  # no bytes copy
            samples += block.shape[1]
    except BaseException:
        for p in paths:
            p.unlink(missing_ok=True)
        raise
    finally:
        for out in outs:
            out.close()
    quotas.decoded(f.job_id, samples * 4 * len(paths))  # float32 samples per channel
    return paths, samples


@dataclass
class Decoded:
    file: File
    info: decode.AudioInfo
    paths: list[Path]
    samples: int


@app.task(bind=True, name=tasks.INGEST_FILES, throws=(progress.FilesFailed,))
def ingest_files(self, file_ids: list[str]) -> None:
    """Decode each file of the group to the spool (a bad file fails alone), run every channel of
    every decoded file through FSMN-VAD together, and store each file in its own transaction as soon as
    its channels end. Ends FAILURE (progress.FilesFailed) if any of its files failed, after the others
    are stored."""
    if retries.split(file_ids):  # an earlier task on this group died: a poison file must stand alone
        return
    settings = get_settings()
    spool = Spool(settings.spool)
    decoded: list[Decoded] = []
    failures: list[tuple[str, str]] = []
    for file_id in file_ids:
        f = claim_file(file_id, failures)
        if f is None:
            continue
        try:
            info = check(f, settings)
            paths, samples = decode_to_spool(f, info, spool)
            if samples < 1:
                raise decode.AudioError("no audio samples decoded (zero-length audio)")
        except decode.AudioError as exc:
            with session_scope() as db:
                failures.append((f.name, _fail(db, db.get(File, file_id), str(exc))))
            continue
        except Exception as exc:  # noqa: BLE001 - not the file's fault as far as we know: kept, tried again
            log.exception("file %s (%s): unexpected error while decoding", f.id, f.name)
            retries.again_alone(file_id, exc)
            continue
        decoded.append(Decoded(f, info, paths, samples))
    if not (decoded and _segment_and_store(self, decoded, settings)):
        # Nothing of this group was stored: a file that failed, or was a copy of one already in its job, may
        # have been its job's last one in flight. The job's waiting segments are cut into batches now, not at
        # the reconciler's next pass (up to 30 s later).
        batching.batch_pending()
    if failures:
        raise progress.FilesFailed.of(failures, len(file_ids))


def _segment_and_store(task, decoded: list[Decoded], settings) -> bool:
    """FSMN-VAD over every channel of the decoded files together; each file is stored as soon as its own
    channels end, and the batcher is offered the segments after each block in which some file ended (the
    shortest call of a group does not wait for the longest: the GPU gets a steady stream of segments, not
    a wave per group). True if some file was stored."""
    from workers.ingest import vad  # torch: loaded where the VAD runs, not in every process that imports this

    owner = [k for k, d in enumerate(decoded) for _ in d.paths]
    first = [owner.index(k) for k in range(len(decoded))]
    found: list[dict[int, list[tuple[int, int]]]] = [{} for _ in decoded]
    stored: set[int] = set()
    streams = [read_raw(p, vad.CHUNK_SAMPLES) for d in decoded for p in d.paths]
    max_ms = int(settings.max_segment_seconds * 1000)
    steps = vad.segments_each(streams, settings.vad_model_dir, max_ms)
    while True:
        try:
            ended = next(steps)
        except StopIteration:
            return bool(stored)
        except Exception as exc:  # noqa: BLE001 - which file caused it is unknown: each not stored tries again alone
            left = [d for k, d in enumerate(decoded) if k not in stored]
            log.exception("the VAD failed on a group of %d file(s)", len(left))
            for d in left:
                retries.again_alone(d.file.id, exc)
            return bool(stored)
        landed = False
        for i, spans in ended:
            k = owner[i]
            found[k][i - first[k]] = spans
            d = decoded[k]
            if len(found[k]) < len(d.paths):
                continue
            total = _store(d, [found[k][c] for c in range(len(d.paths))], settings)
            stored.add(k)
            landed = True
            task.send_event("task-progress", job=d.file.job_id, file=d.file.name, channels=len(d.paths),
                            segments=total)
        if landed:
            batching.batch_pending()


def _store(d: Decoded, spans_per_channel: list[list[tuple[int, int]]], settings) -> int:
    """Channels and segments of one file, in one transaction; returns the number of segments."""
    f, info, samples = d.file, d.info, d.samples
    with read_scope() as db:
        labels = settings.labels(db.get(Job, f.job_id).channel_labels)
    rows = []
    for index, (path, spans) in enumerate(zip(d.paths, spans_per_channel)):
        label = labels[index] if index < len(labels) else f"ch{index}"
        channel = Channel(file_id=f.id, index=index, label=label, duration_s=samples / SAMPLE_RATE,
                          speech_s=sum(e - s for s, e in spans) / 1000.0)
        if spans:
            channel.audio_path = str(path)
            levels = segment_levels(channel_samples(path), spans)  # loudness while the audio is at hand
        else:
            path.unlink(missing_ok=True)
            levels = []
        rows.append((channel, spans, levels))
    total = sum(len(spans) for _, spans, _ in rows)
    with session_scope() as db:
        progress.lock_jobs(db, [f.job_id])
        db.query(Channel).filter(Channel.file_id == f.id).delete()  # a retried ingest starts clean
        fr = db.get(File, f.id)
        fr.format, fr.sample_rate, fr.num_channels = f"{info.format}/{info.codec}", info.sample_rate, info.channels
        fr.duration_s = samples / SAMPLE_RATE
        for channel, spans, levels in rows:
            db.add(channel)
            db.flush()
            db.add_all(Segment(job_id=f.job_id, file_id=f.id, channel_id=channel.id, start_ms=s, end_ms=e,
                               loudness_lufs=lufs, rms_dbfs=dbfs)
                       for (s, e), (lufs, dbfs) in zip(spans, levels))
        # an error of an earlier attempt no longer holds; a damaged but usable file keeps its note
        fr.state, fr.error = FileState.segmented, info.note
        if not total:
            fr.state, fr.error = FileState.done, "; ".join(filter(None, ("no speech detected in any channel",
                                                                          info.note)))
        progress.settle(db, [f.job_id])
    log.info("ingested %s: %d channel(s), %.1f s, %d segments", f.name, len(rows), samples / SAMPLE_RATE, total)
    if info.note:
        log.warning("file %s (%s): %s", f.id, f.name, info.note)
    return total
