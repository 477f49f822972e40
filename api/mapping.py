"""Rows to response bodies, in one place: seconds named `_s`, UTC timestamps, emotion2vec's class names."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from api import schemas
from api.heartbeats import GpuWorkers
from shared.analytics import redaction
from shared.analytics import store as analytics_store
from shared.schema import (Archive, ArchiveState, Channel, File, FileState, Job, JobState, ModelVersion, Result,
                           Segment)

RANDOM_WARNING = ("RANDOM WEIGHTS: at least one model that produced these results has random weights "
                  "(speechq models init-random); the text and labels are not a transcript.")
ACTIVE_JOB = (JobState.queued, JobState.running)
# emotion2vec+'s tokenizer spells its ninth class "<unk>"; the model card calls it "unknown".
EMOTION2VEC_NAMES = {"<unk>": "unknown"}


def seconds(ms: int) -> float:
    return round(ms / 1000.0, 3)


def emotion_label(label: str | None) -> str | None:
    return EMOTION2VEC_NAMES.get(label, label) if label is not None else None


def emotion_scores(scores: dict[str, float] | None) -> dict[str, float] | None:
    if scores is None:
        return None
    return {EMOTION2VEC_NAMES.get(k, k): v for k, v in scores.items()}


def models(db: Session, job_id: str) -> list[ModelVersion]:
    ids = set()
    for asr, emo in db.execute(select(Result.asr_model_id, Result.emotion_model_id)
                               .where(Result.job_id == job_id).distinct()):
        ids.update(i for i in (asr, emo) if i is not None)
    return list(db.scalars(select(ModelVersion).where(ModelVersion.id.in_(ids)))) if ids else []


def random_results(db: Session, job_id: str) -> bool:
    """Whether some result of the job came from random-weight models: one EXISTS that stops at the first
    match, and no query of the results at all where no random-weight model was ever registered (a status
    read stays cheap however many results the job has)."""
    ids = list(db.scalars(select(ModelVersion.id).where(ModelVersion.random_weights.is_(True))))
    if not ids:
        return False
    hit = select(Result.segment_id).where(Result.job_id == job_id,
                                  or_(Result.asr_model_id.in_(ids), Result.emotion_model_id.in_(ids))).limit(1)
    return db.execute(hit).first() is not None


def job_status(db: Session, job: Job, workers: GpuWorkers, used: list[ModelVersion] | None = None
               ) -> schemas.JobStatus:
    """`used`: the models of the job's results, where the caller has them already."""
    rows = db.execute(select(File.name, File.state, File.error).where(File.job_id == job.id, File.error.is_not(None))
                      .order_by(File.name)).all()
    errors = [schemas.FileError(name=n, error=e) for n, state, e in rows if state != FileState.skipped]
    refused = [schemas.FileError(name=n, error=e) for n, e in db.execute(
        select(Archive.name, Archive.error).where(Archive.job_id == job.id, Archive.state == ArchiveState.failed))]
    errors += refused
    active = job.state in ACTIVE_JOB
    random = any(m.random_weights for m in used) if used is not None else random_results(db, job.id)
    return schemas.JobStatus(
        id=job.id, name=job.name, state=job.state.value, files_total=job.files_total, files_done=job.files_done,
        files_failed=job.files_failed, files_skipped=job.files_skipped or 0, archives_failed=len(refused),
        audio_total_s=round(job.audio_seconds_total, 3), audio_done_s=round(job.audio_seconds_done, 3),
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at, error=job.error,
        errors=errors,
        skipped=[schemas.SkippedFile(name=n, reason=e) for n, state, e in rows if state == FileState.skipped],
        random_weights=random or (active and workers.random_weights),
        warning=workers.warning if active else None, redact=bool(job.redact), callback_url=job.callback_url,
        word_timings=bool(job.word_timings),
    )


def segment_out(s: Segment, redact: bool = False) -> schemas.SegmentOut:
    """`redact`: the job asked for redaction; each file's texts are redacted in the database when the file
    settles, and here until then."""
    r = s.result
    text = (redaction.redact(r.text)[0] if redact else r.text) if r else None
    return schemas.SegmentOut(
        id=s.id, start_s=seconds(s.start_ms), end_s=seconds(s.end_ms), state=s.state.value,
        loudness_lufs=s.loudness_lufs, rms_dbfs=s.rms_dbfs,
        text=text, language=r.language if r else None, emotion=r.emotion if r else None,
        event=r.event if r else None, emotion2vec_label=emotion_label(r.emotion2vec_label) if r else None,
        emotion2vec_scores=emotion_scores(r.emotion2vec_scores) if r else None,
        words=r.words if r and not redact else None)  # redacted jobs: the words would show what was redacted


def channel_out(c: Channel, redact: bool = False) -> schemas.ChannelOut:
    return schemas.ChannelOut(index=c.index, label=c.label, duration_s=round(c.duration_s, 3),
                              speech_s=round(c.speech_s, 3), segments=[segment_out(s, redact) for s in c.segments])


def file_out(f: File, channels: list[schemas.ChannelOut], duplicate_of: str | None = None,
             metrics: dict | None = None) -> schemas.FileOut:
    skipped = f.state == FileState.skipped
    return schemas.FileOut(
        id=f.id, name=f.name, state=f.state.value, error=None if skipped else f.error,
        skipped_reason=f.error if skipped else None, format=f.format, sample_rate=f.sample_rate,
        num_channels=f.num_channels, duration_s=round(f.duration_s, 3) if f.duration_s is not None else None,
        sha256=f.sha256, duplicate_of=duplicate_of, channels=channels, metrics=metrics)


def job_results(db: Session, job: Job, workers: GpuWorkers) -> schemas.JobResults:
    files = db.scalars(
        select(File).where(File.job_id == job.id).order_by(File.name)
        .options(selectinload(File.channels).selectinload(Channel.segments).selectinload(Segment.result))
    ).all()
    names = {f.id: f.name for f in files}
    channels = {f.id: [channel_out(c, job.redact) for c in f.channels] for f in files if not f.duplicate_of}
    metrics = analytics_store.file_metrics(db, list(channels))
    # A duplicate shows its original's channels and metrics: the same audio was processed once.
    out = [file_out(f, channels.get(f.duplicate_of or f.id, []), names.get(f.duplicate_of),
                    metrics.get(f.duplicate_of or f.id)) for f in files]
    used = models(db, job.id)
    status = job_status(db, job, workers, used)
    return schemas.JobResults(
        job=status, files=out, warning=RANDOM_WARNING if status.random_weights else None,
        models=[schemas.ModelInfo.model_validate(m, from_attributes=True) for m in used])
