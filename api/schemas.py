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

# What a client may send: no NUL byte anywhere (PostgreSQL keeps none), and no longer than the column it fills.
NO_NUL = r"^[^\x00]*$"
JobName = Annotated[str, Field(max_length=255, pattern=NO_NUL, description="A name for the job (255 characters at "
                                                                           "most).")]
ChannelLabels = Annotated[str, Field(max_length=255, pattern=NO_NUL, examples=["agent,customer"],
                                     description="Comma-separated labels of the channels, in order.")]
Language = Annotated[str, Field(max_length=16, pattern=NO_NUL, examples=["auto", "en", "zh"])]
ServerPath = Annotated[str, Field(min_length=1, max_length=4096, pattern=NO_NUL,
                                  description="Relative to the import root, or absolute under it; each part of the "
                                              "path 255 bytes at most.")]


class PathsRequest(BaseModel):
    paths: list[ServerPath] = Field(..., min_length=1, description="Files or archives under the server's import "
                                                                   "root (at most SPEECHQ_MAX_JOB_FILES).")
    name: JobName | None = None
    channel_labels: ChannelLabels | None = None
    language: Language | None = None
    use_itn: bool | None = None
    redact: bool = Field(False, description="Redact PII (cards, phone numbers, e-mail addresses, numbers) from the "
                                            "texts; see docs/METRICS.md.")
    callback_url: str | None = Field(None, max_length=2048, description="http(s) URL that gets the job's final "
                                     "status, signed (see README, Webhooks).", examples=["https://example.com/hook"])
    word_timings: bool | None = Field(None, description="Time every word of the transcripts (results' `words`); "
                                      "unset: the server's SPEECHQ_WORD_TIMINGS.")


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
    archives_failed: int = Field(0, description="Archives refused whole (unreadable, a bomb, over a limit): none of "
                                                "their members is among the files; `errors` says why.")
    audio_total_s: float = Field(description="Seconds of audio in the files probed so far.")
    audio_done_s: float = Field(description="Seconds of audio in the files whose results are complete.")
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    error: str | None
    errors: list[FileError] = Field([], description="Files that failed, or finished with a note (no speech).")
    skipped: list[SkippedFile] = []
    random_weights: bool = Field(False, description="True if the results come (or will come) from RANDOM weights.")
    redact: bool = Field(False, description="PII redaction was asked: texts show placeholders such as [CARD].")
    warning: str | None = Field(None, description="Why a queued or running job is not moving, e.g. no live GPU "
                                                  "worker.")
    callback_url: str | None = Field(None, description="Where the final status is POSTed when the job ends.")
    word_timings: bool = Field(False, description="Word timings were asked: the segments carry `words`.")


class ModelInfo(BaseModel):
    name: str
    revision: str | None
    sha256: str
    random_weights: bool


class WordOut(BaseModel):
    w: str = Field(description="The word as SenseVoice wrote it (pieces joined as funasr joins them).")
    start_s: float = Field(description="Start in seconds of the file.")
    end_s: float = Field(description="End in seconds of the file.")


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
    loudness_lufs: float | None = Field(None, description="Integrated loudness (ITU-R BS.1770) of the segment; "
                                       "None under 0.4 s.")
    rms_dbfs: float | None = Field(None, description="RMS level of the segment in dBFS.")
    words: list[WordOut] | None = Field(
        None, description="Every word of `text` with its start and end in seconds of the file (funasr's "
        "output_timestamp=True, 60 ms frames); None when the job did not ask for them (`word_timings`) or "
        "asked for redaction.")


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
    metrics: dict | None = Field(None, description="Call metrics of the file (talk time, silences, interruptions, "
                                 "talk speed, loudness, emotion trend, language per channel), once the file is "
                                 "done; definitions in docs/METRICS.md.")


class JobResults(BaseModel):
    job: JobStatus
    models: list[ModelInfo]
    warning: str | None = None
    files: list[FileOut]
