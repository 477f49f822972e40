"""Request and response bodies of the HTTP API.

One convention for every response: times and durations are seconds, named with an `_s` suffix; timestamps
are timezone-aware UTC (ISO 8601 ending in `Z`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored in UTC), PostgreSQL aware ones in the session's zone."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class PathsRequest(BaseModel):
    paths: list[str] = Field(..., min_length=1, description="Files or archives under the server's import root.")
    name: str | None = None
    channel_labels: str | None = Field(None, examples=["agent,customer"])
    language: str | None = Field(None, examples=["auto", "en", "zh"])
    use_itn: bool | None = None


class FileError(BaseModel):
    name: str = Field(description="The file as submitted (archive members as archive/member).")
    error: str


class SkippedFile(BaseModel):
    name: str
    reason: str = Field(examples=["sidecar file (.txt), not audio"])


class JobStatus(BaseModel):
    id: str
    name: str | None
    state: str = Field(description="queued, running, done, failed or cancelled.")
    files_total: int = Field(description="Every file of the job, archive members included, skipped ones too.")
    files_done: int
    files_failed: int
    files_skipped: int = Field(0, description="Files that are not audio (sidecars such as notes.txt): not failures.")
    audio_total_s: float = Field(description="Seconds of audio in the files probed so far.")
    audio_done_s: float = Field(description="Seconds of audio in the files whose results are complete.")
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    error: str | None
    errors: list[FileError] = Field([], description="Files that failed, or finished with a note (no speech).")
    skipped: list[SkippedFile] = []
    random_weights: bool = Field(False, description="True if the results come (or will come) from RANDOM weights.")
    warning: str | None = Field(None, description="Why a queued or running job is not moving, e.g. no live GPU "
                                                  "worker.")


class ModelInfo(BaseModel):
    name: str
    revision: str | None
    sha256: str
    random_weights: bool


class SegmentOut(BaseModel):
    id: str = Field(description="Stable id of the segment (the same on every read).")
    start_s: float
    end_s: float
    text: str | None
    language: str | None
    emotion: str | None = Field(description="SenseVoice's emotion tag.")
    event: str | None = Field(description="SenseVoice's audio event tag, e.g. Speech, Laughter, Music.")
    emotion2vec_label: str | None = Field(description="emotion2vec+'s top class of its 9.")
    emotion2vec_scores: dict[str, float] | None = Field(
        description="Probability of each emotion2vec+ class; its <unk> class is named 'unknown'.")
    state: str


class ChannelOut(BaseModel):
    index: int
    label: str
    duration_s: float
    speech_s: float
    segments: list[SegmentOut]


class FileOut(BaseModel):
    id: str
    name: str
    state: str = Field(description="queued, ingesting, segmented, done, failed, cancelled or skipped.")
    error: str | None = Field(description="Why the file failed, or a note such as 'no speech detected'.")
    skipped_reason: str | None = Field(None, description="Why the file was skipped as not audio.")
    format: str | None
    sample_rate: int | None
    num_channels: int | None
    duration_s: float | None
    sha256: str | None
    duplicate_of: str | None = Field(None, description="Name of the file with the same audio; its results are shown.")
    channels: list[ChannelOut]


class JobResults(BaseModel):
    job: JobStatus
    models: list[ModelInfo]
    warning: str | None = None
    files: list[FileOut]
