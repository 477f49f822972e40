"""/v1/jobs/{id}/export: a job's results as JSONL, CSV, SRT, WebVTT or a zip of every call, streamed."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.deps import SessionDep, SettingsDep
from api.auth import PrincipalDep, owned_job, require
from shared import exports
from shared.db import session_factory
from shared.schema import File

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["exports"], dependencies=[Depends(require)])


@router.get(
    "/{job_id}/export", response_class=StreamingResponse,
    summary="Export results: one row per segment (jsonl, csv), subtitles of one call (srt, vtt), or a zip",
    description="JSONL and CSV carry one row per segment: file, channel label, times (seconds), text, language, "
                "both emotions, event, and word timings and call metrics where present. SRT and WebVTT put every "
                "channel of one call (`file_id`) in one timeline with speaker labels. `zip` holds, per call, one "
                "file per format. The export streams: any size of job is read a page at a time.",
    responses={200: {"content": {t: {} for t in exports.MEDIA_TYPES.values()}}})
def export(job_id: str, db: SessionDep, settings: SettingsDep, principal: PrincipalDep,
           format: Annotated[Literal["jsonl", "csv", "srt", "vtt", "zip"], Query()] = "jsonl",
           file_id: Annotated[str | None, Query(description="One call of the job; required for srt and vtt")] = None):
    job = owned_job(db, principal, job_id)
    filename = f"speechq-{job.id}"
    if file_id is not None:
        name = db.scalar(select(File.name).where(File.id == file_id, File.job_id == job.id))
        if name is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {file_id} in job {job.id}")
        filename = name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0] or file_id
    db.close()  # the export reads its own pages, each in a short transaction: this request's ends here
    try:
        body = exports.stream(format, session_factory(), job.id, file_id, settings.export_page_rows)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    log.info("job %s: export %s%s", job.id, format, f" of file {file_id}" if file_id else "")
    disposition = f"attachment; filename=\"{_ascii(filename)}.{format}\""
    return StreamingResponse(body, media_type=exports.MEDIA_TYPES[format],
                             headers={"Content-Disposition": disposition})


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name)
