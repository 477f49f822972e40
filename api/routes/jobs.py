"""/v1/jobs: submit, poll, read results, cancel."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, UploadFile, status
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from api import schemas
from api.deps import SessionDep, SettingsDep
from api.submit import Incoming, SubmitError, create_job, enqueue, resolve_server_path
from api.uploads import TooLarge, save_upload
from shared.schema import (Archive, ArchiveState, Channel, File, FileState, Job, JobState, ModelVersion, Result,
                           Segment, utcnow)
from shared.storage import Spool

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
RANDOM_WARNING = ("RANDOM WEIGHTS: at least one model that produced these results has random weights "
                  "(speechq models init-random); the text and labels are not a transcript.")


def _get_job(db, job_id: str) -> Job:
    job = db.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job


def _models(db, job_id: str) -> list[ModelVersion]:
    ids = set()
    for asr, emo in db.execute(select(Result.asr_model_id, Result.emotion_model_id)
                               .where(Result.job_id == job_id).distinct()):
        ids.update(i for i in (asr, emo) if i is not None)
    return list(db.scalars(select(ModelVersion).where(ModelVersion.id.in_(ids)))) if ids else []


def job_status(db, job: Job) -> schemas.JobStatus:
    errors = [schemas.FileError(name=n, error=e) for n, e in db.execute(
        select(File.name, File.error).where(File.job_id == job.id, File.error.is_not(None)).order_by(File.name))]
    errors += [schemas.FileError(name=n, error=e) for n, e in db.execute(
        select(Archive.name, Archive.error).where(Archive.job_id == job.id, Archive.state == ArchiveState.failed))]
    return schemas.JobStatus(
        id=job.id, name=job.name, state=job.state.value, files_total=job.files_total, files_done=job.files_done,
        files_failed=job.files_failed, audio_seconds_total=round(job.audio_seconds_total, 3),
        audio_seconds_done=round(job.audio_seconds_done, 3), created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, error=job.error, errors=errors,
        random_weights=any(m.random_weights for m in _models(db, job.id)),
    )


def _submitted(db, job, file_ids, archive_ids) -> schemas.JobStatus:
    db.commit()
    enqueue(file_ids, archive_ids)
    log.info("job %s: %d file(s), %d archive(s) queued", job.id, len(file_ids), len(archive_ids))
    return job_status(db, job)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.JobStatus,
             summary="Create a job from uploaded audio files and/or zip/tar archives")
async def create_from_upload(
    db: SessionDep, settings: SettingsDep, files: list[UploadFile],
    name: Annotated[str | None, Form()] = None,
    channel_labels: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form()] = None,
    use_itn: Annotated[bool | None, Form()] = None,
):
    job = Job()
    db.add(job)
    db.flush()
    directory = Spool(settings.spool).uploads(job.id)
    items: list[Incoming] = []
    try:
        for upload in files:
            items.append(await save_upload(upload, directory, settings.max_upload_bytes))
        job, file_ids, archive_ids = create_job(db, settings, items, name=name, channel_labels=channel_labels,
                                                language=language, use_itn=use_itn, job=job)
    except TooLarge:
        Spool(settings.spool).clean_job(job.id)
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"upload larger than the limit of {settings.max_upload_bytes} bytes")
    except SubmitError as exc:
        Spool(settings.spool).clean_job(job.id)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    return _submitted(db, job, file_ids, archive_ids)


@router.post("/paths", status_code=status.HTTP_201_CREATED, response_model=schemas.JobStatus,
             summary="Create a job from files or archives under the server's import root")
def create_from_paths(body: schemas.PathsRequest, db: SessionDep, settings: SettingsDep):
    try:
        items = []
        for raw in body.paths:
            path = resolve_server_path(settings, raw)
            items.append(Incoming(name=raw, path=path, size=path.stat().st_size))
        job, file_ids, archive_ids = create_job(db, settings, items, name=body.name,
                                                channel_labels=body.channel_labels, language=body.language,
                                                use_itn=body.use_itn)
    except SubmitError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    return _submitted(db, job, file_ids, archive_ids)


@router.get("", response_model=list[schemas.JobStatus], summary="Recent jobs")
def list_jobs(db: SessionDep, limit: int = 50):
    jobs = db.scalars(select(Job).order_by(Job.created_at.desc()).limit(min(limit, 500)))
    return [job_status(db, j) for j in jobs]


@router.get("/{job_id}", response_model=schemas.JobStatus, summary="Job status from the database counters")
def get_job(job_id: str, db: SessionDep):
    return job_status(db, _get_job(db, job_id))


@router.get("/{job_id}/results", response_model=schemas.JobResults,
            summary="Results per file, channel and segment")
def get_results(job_id: str, db: SessionDep):
    job = _get_job(db, job_id)
    files = db.scalars(
        select(File).where(File.job_id == job_id).order_by(File.name)
        .options(selectinload(File.channels).selectinload(Channel.segments).selectinload(Segment.result))
    ).all()
    out = []
    names = {f.id: f.name for f in files}
    by_id: dict[str, list] = {}
    for f in sorted(files, key=lambda f: f.duplicate_of is not None):  # originals first
        if f.duplicate_of:
            out.append(schemas.FileOut(id=f.id, name=f.name, state=f.state.value, error=f.error, format=f.format,
                                       sample_rate=f.sample_rate, num_channels=f.num_channels,
                                       duration_s=f.duration_s, sha256=f.sha256,
                                       duplicate_of=names.get(f.duplicate_of), channels=by_id.get(f.duplicate_of, [])))
            continue
        channels = []
        for c in f.channels:
            segs = []
            for s in c.segments:
                r = s.result
                segs.append(schemas.SegmentOut(
                    start_ms=s.start_ms, end_ms=s.end_ms, state=s.state.value,
                    text=r.text if r else None, language=r.language if r else None,
                    emotion=r.emotion if r else None, event=r.event if r else None,
                    emotion2vec_label=r.emotion2vec_label if r else None,
                    emotion2vec_scores=r.emotion2vec_scores if r else None))
            channels.append(schemas.ChannelOut(index=c.index, label=c.label, duration_s=round(c.duration_s, 3),
                                               speech_s=round(c.speech_s, 3), segments=segs))
        by_id[f.id] = channels
        out.append(schemas.FileOut(id=f.id, name=f.name, state=f.state.value, error=f.error, format=f.format,
                                   sample_rate=f.sample_rate, num_channels=f.num_channels, duration_s=f.duration_s,
                                   sha256=f.sha256, channels=channels))
    out.sort(key=lambda f: f.name)
    models = _models(db, job_id)
    random = any(m.random_weights for m in models)
    return schemas.JobResults(
        job=job_status(db, job), files=out, warning=RANDOM_WARNING if random else None,
        models=[schemas.ModelInfo(name=m.name, revision=m.revision, sha256=m.sha256,
                                  random_weights=m.random_weights) for m in models])


@router.post("/{job_id}/cancel", response_model=schemas.JobStatus, summary="Cancel a job; finished work is kept")
def cancel_job(job_id: str, db: SessionDep, settings: SettingsDep):
    job = _get_job(db, job_id)
    if job.state in (JobState.done, JobState.failed, JobState.cancelled):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job is already {job.state.value}")
    job.state, job.finished_at, job.error = JobState.cancelled, utcnow(), "cancelled by request"
    db.query(File).filter(File.job_id == job_id, File.state.in_((FileState.queued, FileState.ingesting,
                                                                  FileState.segmented))).update(
        {File.state: FileState.cancelled}, synchronize_session=False)
    db.commit()
    Spool(settings.spool).clean_job(job_id)
    log.info("job %s cancelled", job_id)
    return job_status(db, job)
