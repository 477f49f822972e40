"""/v1/jobs: submit, poll, read results, cancel, delete. Every route needs the caller's key (api/auth.py);
a key sees only its own jobs (`owned_job`, `visible`), an admin key all of them."""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Response, UploadFile, status
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api import imports, limits, listing, mapping, schemas, submit
from api.auth import UNAUTHORIZED, PrincipalDep, owned_job, require, visible
from api.deps import IdempotencyKey, SessionDep, SettingsDep
from api.heartbeats import gpu_workers
from api.submit import Incoming, SubmitError, resolve_server_path
from api.uploads import TooLarge, save_upload
from shared import endings, retention, webhooks
from shared.schema import File, FileState, Job, JobState, new_id, utcnow
from shared.storage import Spool

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require)], responses=UNAUTHORIZED)




SUBMITTED = {
    200: {"model": schemas.JobStatus, "description": "A retry: the job that an earlier request with the same "
          "Idempotency-Key created (nothing new is stored)"},
    429: {"description": "The API key has SPEECHQ_MAX_JOBS_IN_FLIGHT jobs queued or running: retry after "
          "Retry-After seconds"},
    503: {"description": "The database is unavailable (restarting or overloaded): retry after Retry-After seconds "
          "with the same Idempotency-Key"},
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.JobStatus, responses=SUBMITTED,
             summary="Create a job from uploaded audio files and/or zip/tar archives")
async def create_from_upload(
    response: Response, settings: SettingsDep, principal: PrincipalDep, files: list[UploadFile],
    idempotency_key: IdempotencyKey = None,
    name: Annotated[schemas.JobName | None, Form()] = None,
    channel_labels: Annotated[schemas.ChannelLabels | None, Form()] = None,
    language: Annotated[schemas.Language | None, Form()] = None,
    use_itn: Annotated[bool | None, Form()] = None,
    redact: Annotated[bool, Form(description="Redact PII (cards, phone numbers, e-mail addresses, numbers) "
                                             "from the texts; see docs/METRICS.md")] = False,
    callback_url: Annotated[str | None, Form(description="http(s) URL that gets the job's final status, signed "
                                                          "(see README, Webhooks)")] = None,
    word_timings: Annotated[bool | None, Form(description="Time every word of the transcripts; unset: the server's "
                                                          "SPEECHQ_WORD_TIMINGS")] = None,
):
    limits.check_uploads(files, settings.max_job_files)
    # The database is used on worker threads, in short transactions: none is open while files are copied.
    idempotency_key = submit.scoped_key(principal.key_id, idempotency_key)
    if earlier := await run_in_threadpool(submit.replay, settings, idempotency_key):
        response.status_code = status.HTTP_200_OK
        return earlier
    await run_in_threadpool(limits.check_in_flight, settings, principal.key_id)
    row = {"id": new_id(), "idempotency_key": idempotency_key, "owner_key_id": principal.key_id, "redact": redact,
           "callback_url": _callback(settings, callback_url)}
    spool = Spool(settings.spool)
    created = False
    try:
        items = [await save_upload(upload, spool.uploads(row["id"]), settings.max_upload_bytes) for upload in files]
        with anyio.CancelScope(shield=True):  # once started, the insert finishes and its outcome is handled here
            created, out = await run_in_threadpool(
                functools.partial(submit.store, settings, items, row, name=name, channel_labels=channel_labels,
                                  language=language, use_itn=use_itn, word_timings=word_timings))
    except TooLarge:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"upload larger than the limit of {settings.max_upload_bytes} bytes")
    except SubmitError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    finally:
        if not created:  # refused, failed, or a retry that lost the race: no job owns these files
            spool.clean_job(row["id"])
    if not created:
        response.status_code = status.HTTP_200_OK
    return out


@router.post("/paths", status_code=status.HTTP_201_CREATED, response_model=schemas.JobStatus, responses=SUBMITTED,
             summary="Create a job from files or archives under the server's import root")
def create_from_paths(body: schemas.PathsRequest, response: Response, settings: SettingsDep,
                      principal: PrincipalDep, idempotency_key: IdempotencyKey = None):
    idempotency_key = submit.scoped_key(principal.key_id, idempotency_key)
    if earlier := submit.replay(settings, idempotency_key):
        response.status_code = status.HTTP_200_OK
        return earlier
    limits.check_in_flight(settings, principal.key_id)
    if len(body.paths) > settings.max_job_files:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"paths: {len(body.paths)} paths, over the limit "
                            f"of {settings.max_job_files} files per job (SPEECHQ_MAX_JOB_FILES)")
    try:
        items = []
        for raw in body.paths:
            path = resolve_server_path(settings, raw)
            items.append(Incoming(name=raw, path=path, size=path.stat().st_size))
        imports.fingerprint(items)  # the same audio twice is processed once, as for uploads
        created, out = submit.store(settings, items, {"id": new_id(), "idempotency_key": idempotency_key,
                                                      "owner_key_id": principal.key_id, "redact": body.redact,
                                                      "callback_url": _callback(settings, body.callback_url)},
                                    name=body.name, channel_labels=body.channel_labels, language=body.language,
                                    use_itn=body.use_itn, word_timings=body.word_timings)
    except SubmitError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    if not created:
        response.status_code = status.HTTP_200_OK
    return out


@router.get("", response_model=list[schemas.JobStatus], summary="Find jobs: newest first, filtered, a page at a time",
            description="Filters combine (AND). When more jobs match than `limit`, the response has an "
                        "`X-Next-Cursor` header: pass it as `cursor` (with the same filters) for the next page.")
def list_jobs(db: SessionDep, settings: SettingsDep, principal: PrincipalDep, response: Response,
              limit: Annotated[int, Query(ge=1, le=listing.MAX_LIMIT)] = 50,
              state: Annotated[list[JobState] | None, Query(description="One or more states")] = None,
              name: Annotated[str | None, Query(max_length=255, description="Part of the job's name, any case")] = None,
              created_after: Annotated[datetime | None, Query(description="Created at or after (ISO 8601, UTC "
                                                                          "when no offset)")] = None,
              created_before: Annotated[datetime | None, Query(description="Created before")] = None,
              cursor: Annotated[str | None, Query(max_length=200, description="X-Next-Cursor of the page before")
                                ] = None):
    try:
        stmt = listing.filtered(visible(select(Job), principal), state, name, created_after, created_before, cursor)
    except listing.BadFilter as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    jobs = list(db.scalars(stmt.limit(limit + 1)))
    if len(jobs) > limit:
        jobs = jobs[:limit]
        response.headers["X-Next-Cursor"] = listing.encode(jobs[-1])
    workers = gpu_workers(settings)
    return [mapping.job_status(db, j, workers) for j in jobs]


@router.get("/{job_id}", response_model=schemas.JobStatus, summary="Job status from the database counters")
def get_job(job_id: str, db: SessionDep, settings: SettingsDep, principal: PrincipalDep):
    return mapping.job_status(db, owned_job(db, principal, job_id), gpu_workers(settings))


@router.get("/{job_id}/results", response_model=schemas.JobResults,
            summary="Results per file, channel and segment (times in seconds)")
def get_results(job_id: str, db: SessionDep, settings: SettingsDep, principal: PrincipalDep):
    return mapping.job_results(db, owned_job(db, principal, job_id), gpu_workers(settings))


@router.post("/{job_id}/cancel", response_model=schemas.JobStatus, summary="Cancel a job; finished work is kept")
def cancel_job(job_id: str, db: SessionDep, settings: SettingsDep, principal: PrincipalDep):
    job = owned_job(db, principal, job_id)
    if job.state in (JobState.done, JobState.failed, JobState.cancelled):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job is already {job.state.value}")
    _cancel(db, job)
    db.commit()
    Spool(settings.spool).clean_job(job_id)
    log.info("job %s cancelled", job_id)
    return mapping.job_status(db, job, gpu_workers(settings))


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a job: its rows, results and audio everywhere (a running job is cancelled first)")
def delete_job(job_id: str, db: SessionDep, settings: SettingsDep, principal: PrincipalDep):
    job = owned_job(db, principal, job_id)
    if job.state not in retention.ENDED:
        _cancel(db, job)
        db.commit()
    batch_files = retention.delete_rows(db, job_id)
    db.commit()
    retention.remove_audio(Spool(settings.spool), job_id, batch_files)
    log.info("job %s deleted by %s", job_id, principal.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _callback(settings, url: str | None) -> str | None:
    """The submission's callback URL, checked (shared/webhooks.py); 422 naming the field when it is wrong."""
    try:
        return webhooks.checked_url(url, settings)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _cancel(db, job: Job) -> None:
    """Mark `job` and its unfinished files cancelled, in the caller's transaction."""
    job_id = job.id
    job.state, job.finished_at, job.error = JobState.cancelled, utcnow(), "cancelled by request"
    db.query(File).filter(File.job_id == job_id, File.state.in_((FileState.queued, FileState.ingesting,
                                                                  FileState.segmented))).update(
        {File.state: FileState.cancelled}, synchronize_session=False)
    endings.job_ended(db, job)
