"""/v1/jobs/{id}/files/{file_id}: one call's conversation (turns, overlaps, metrics) and its redacted audio."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from api.auth import PrincipalDep, owned_job, require
from api.deps import SessionDep, SettingsDep
from api.mapping import seconds
from shared.analytics import audio, redaction
from shared.analytics import store as analytics_store
from shared.analytics.conversation import turns
from shared.analytics.metrics import turn_emotion
from shared.schema import File, FileState
from shared.storage import Spool

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["calls"], dependencies=[Depends(require)])


class OverlapOut(BaseModel):
    start_s: float
    end_s: float
    duration_s: float
    by: str | None = Field(description="Label of the channel that started talking while the other talked "
                                       "(None when both started together).")
    over: str | None = Field(description="Label of the channel talked over.")


class TurnOut(BaseModel):
    channel: str
    channel_index: int
    start_s: float
    end_s: float
    text: str
    segment_ids: list[str]
    emotion: str | None = Field(description="SenseVoice's tag with the most seconds in the turn.")
    emotion2vec_label: str | None = Field(description="emotion2vec+'s top class of its scores averaged over the turn.")
    valence: float | None = Field(description="emotion2vec+ valence, -1..1 (docs/METRICS.md).")
    overlaps: list[OverlapOut]


class ConversationOut(BaseModel):
    file_id: str
    name: str
    turns: list[TurnOut]
    overlaps: list[OverlapOut]
    metrics: dict | None = Field(description="The file's call metrics once its job has ended (docs/METRICS.md).")


def _file(db, principal, job_id: str, file_id: str) -> tuple:
    job = owned_job(db, principal, job_id)
    f = db.get(File, file_id)
    if f is None or f.job_id != job.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {file_id} in job {job_id}")
    return job, f


def _overlap(o, labels: dict[int, str]) -> OverlapOut:
    return OverlapOut(start_s=seconds(o.start_ms), end_s=seconds(o.end_ms), duration_s=round(o.seconds, 3),
                      by=labels.get(o.by), over=labels.get(o.over))


@router.get("/{job_id}/files/{file_id}/conversation", response_model=ConversationOut,
            summary="One call's turns in time order, every channel merged, with overlaps marked")
def conversation(job_id: str, file_id: str, db: SessionDep, principal: PrincipalDep):
    job, f = _file(db, principal, job_id, file_id)
    source = f.duplicate_of or f.id
    per_file, labels = analytics_store.utterances(db, [source])
    names = labels.get(source, {})
    out_turns, all_overlaps = [], {}
    for t in turns(per_file.get(source, [])):
        emo = turn_emotion(t)
        text = redaction.redact(t.text)[0] if job.redact else t.text
        for o in t.overlaps:
            all_overlaps[(o.start_ms, o.end_ms, o.channels)] = o
        out_turns.append(TurnOut(
            channel=t.label, channel_index=t.channel, start_s=seconds(t.start_ms), end_s=seconds(t.end_ms),
            text=text or "", segment_ids=[u.segment_id for u in t.utterances], emotion=emo["emotion"],
            emotion2vec_label=emo["emotion2vec_label"],
            valence=round(emo["valence"], 4) if emo["valence"] is not None else None,
            overlaps=[_overlap(o, names) for o in t.overlaps]))
    return ConversationOut(
        file_id=f.id, name=f.name, turns=out_turns,
        overlaps=[_overlap(o, names) for o in sorted(all_overlaps.values(), key=lambda o: o.start_ms)],
        metrics=analytics_store.file_metrics(db, [source]).get(source))


@router.get("/{job_id}/files/{file_id}/audio", response_class=FileResponse,
            responses={200: {"content": {"audio/wav": {}}}, 409: {"description": "The recording is no longer kept"}},
            summary="The call's audio with every redacted span replaced by a tone or silence (WAV)")
def redacted_audio(job_id: str, file_id: str, db: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                   redacted: bool = True, fill: Literal["tone", "silence"] = "tone"):
    """Available while the recording is kept: a server-side path under the import root as long as it exists,
    an upload only until its job ends (the spool is cleaned then). Spans are the stored redactions of a job
    that ended, else those found now in the results."""
    if not redacted:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "only the redacted audio is served (redacted=true)")
    job, f = _file(db, principal, job_id, file_id)
    if f.state not in (FileState.done, FileState.segmented):
        raise HTTPException(status.HTTP_409_CONFLICT, f"file {f.name} is {f.state.value}: no results to redact")
    source = f.duplicate_of or f.id
    spans = [(c, s / 1000.0, e / 1000.0) for c, s, e, _ in analytics_store.file_spans(db, source)]
    channels = f.num_channels or 1 + max([c for c, _, _ in spans], default=0)
    workdir = Path(tempfile.mkdtemp(prefix="speechq-redact-"))
    try:
        out = audio.write_redacted(Path(f.path), workdir / "redacted.wav", spans, channels, fill)
    except audio.AudioUnavailable as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise HTTPException(status.HTTP_409_CONFLICT, Spool(settings.spool).redact(str(exc), {f.path: f.name}))
    log.info("job %s file %s: redacted audio with %d span(s)", job.id, f.id, len(spans))
    stem = Path(f.name).stem or "call"
    return FileResponse(out, media_type="audio/wav", filename=f"{stem}.redacted.wav",
                        background=BackgroundTask(shutil.rmtree, workdir, ignore_errors=True))
