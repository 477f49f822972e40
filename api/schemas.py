"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class PathsRequest(BaseModel):
    paths: list[str] = Field(..., min_length=1, description="Files or archives under the server's import root.")
    name: str | None = None
    channel_labels: str | None = Field(None, examples=["agent,customer"])
    language: str | None = Field(None, examples=["auto", "en", "zh"])
    use_itn: bool | None = None


class FileError(BaseModel):
    name: str
    error: str


class JobStatus(BaseModel):
    id: str
    name: str | None
    state: str
    files_total: int
    files_done: int
    files_failed: int
    audio_seconds_total: float
    audio_seconds_done: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    errors: list[FileError] = []
    random_weights: bool = Field(False, description="True if any result came from RANDOM model weights.")


class ModelInfo(BaseModel):
    name: str
    revision: str | None
    sha256: str
    random_weights: bool


class SegmentOut(BaseModel):
    start_ms: int
    end_ms: int
    text: str | None
    language: str | None
    emotion: str | None
    event: str | None
    emotion2vec_label: str | None
    emotion2vec_scores: dict[str, float] | None
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
    state: str
    error: str | None
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
