"""/v1/jobs: submit, poll, read results, cancel."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, UploadFile, status
from sqlalchemy import select

from api import mapping, schemas
from api.deps import SessionDep, SettingsDep
from api.heartbeats import gpu_workers
from api.submit import Incoming, SubmitError, create_job, enqueue, resolve_server_path
from api.uploads import TooLarge, save_upload
from shared import endings
from shared.schema import File, FileState, Job, JobState, utcnow
from shared.storage import Spool

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _get_job(db, job_id: str) -> Job:
    job = db.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job


def _submitted(db, settings, job, files, archives) -> schemas.JobStatus:
    db.commit()
    enqueue(files, archives)
    log.info("job %s: %d file(s), %d archive(s) queued, %d skipped", job.id, len(files), len(archives),
             job.files_skipped or 0)
    return mapping.job_status(db, job, gpu_workers(settings))


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
        job, queued, archives = create_job(db, settings, items, name=name, channel_labels=channel_labels,
                                           language=language, use_itn=use_itn, job=job)
    except TooLarge:
        Spool(settings.spool).clean_job(job.id)
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"upload larger than the limit of {settings.max_upload_bytes} bytes")
    except SubmitError as exc:
        Spool(settings.spool).clean_job(job.id)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    return _submitted(db, settings, job, queued, archives)


@router.post("/paths", status_code=status.HTTP_201_CREATED, response_model=schemas.JobStatus,
             summary="Create a job from files or archives under the server's import root")
def create_from_paths(body: schemas.PathsRequest, db: SessionDep, settings: SettingsDep):
    try:
        items = []
        for raw in body.paths:
            path = resolve_server_path(settings, raw)
            items.append(Incoming(name=raw, path=path, size=path.stat().st_size))
        job, queued, archives = create_job(db, settings, items, name=body.name,
                                           channel_labels=body.channel_labels, language=body.language,
                                           use_itn=body.use_itn)
    except SubmitError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    return _submitted(db, settings, job, queued, archives)


@router.get("", response_model=list[schemas.JobStatus], summary="Recent jobs")
def list_jobs(db: SessionDep, settings: SettingsDep, limit: int = 50):
    jobs = db.scalars(select(Job).order_by(Job.created_at.desc()).limit(min(limit, 500)))
    workers = gpu_workers(settings)
    return [mapping.job_status(db, j, workers) for j in jobs]


@router.get("/{job_id}", response_model=schemas.JobStatus, summary="Job status from the database counters")
def get_job(job_id: str, db: SessionDep, settings: SettingsDep):
    return mapping.job_status(db, _get_job(db, job_id), gpu_workers(settings))


@router.get("/{job_id}/results", response_model=schemas.JobResults,
            summary="Results per file, channel and segment (times in seconds)")
def get_results(job_id: str, db: SessionDep, settings: SettingsDep):
    return mapping.job_results(db, _get_job(db, job_id), gpu_workers(settings))


@router.post("/{job_id}/cancel", response_model=schemas.JobStatus, summary="Cancel a job; finished work is kept")
def cancel_job(job_id: str, db: SessionDep, settings: SettingsDep):
    job = _get_job(db, job_id)
    if job.state in (JobState.done, JobState.failed, JobState.cancelled):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job is already {job.state.value}")
    job.state, job.finished_at, job.error = JobState.cancelled, utcnow(), "cancelled by request"
    db.query(File).filter(File.job_id == job_id, File.state.in_((FileState.queued, FileState.ingesting,
                                                                  FileState.segmented))).update(
        {File.state: FileState.cancelled}, synchronize_session=False)
    endings.job_ended(db, job)
    db.commit()
    Spool(settings.spool).clean_job(job_id)
    log.info("job %s cancelled", job_id)
    return mapping.job_status(db, job, gpu_workers(settings))
