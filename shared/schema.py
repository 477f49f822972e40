"""Database rows: jobs, files (archive members), channels, segments, batches, results, models.

The database is the source of truth (ARCHITECTURE.md, contract 1): every unit of work has an
explicit state, and Redis only carries messages that point at rows.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Enum, Float, ForeignKey, Integer, String, Text
from sqlalchemy import UniqueConstraint, Index
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class FileState(str, enum.Enum):
    queued = "queued"
    ingesting = "ingesting"
    segmented = "segmented"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"
    skipped = "skipped"  # not audio (a sidecar such as notes.txt or calls.csv): the reason is in `error`


class SegmentState(str, enum.Enum):
    pending = "pending"
    batched = "batched"
    done = "done"
    failed = "failed"


class BatchState(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


def _enum(cls: type[enum.Enum]) -> Enum:
    """States are VARCHAR(16) without a CHECK constraint on every database: a new state needs no DDL."""
    return Enum(cls, native_enum=False, length=16, validate_strings=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.queued, index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    channel_labels: Mapped[str] = mapped_column(String(255), default="agent,customer")
    language: Mapped[str] = mapped_column(String(16), default="auto")
    use_itn: Mapped[bool] = mapped_column(Boolean, default=True)
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    files_skipped: Mapped[int] = mapped_column(Integer, default=0)
    audio_seconds_total: Mapped[float] = mapped_column(Float, default=0.0)
    audio_seconds_done: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    owner_key_id: Mapped[str | None] = mapped_column(
        String(32), index=True, doc="The API key that created the job (api_keys.id); NULL in keyless mode.")
    idempotency_key: Mapped[str | None] = mapped_column(
        String(255), unique=True, doc="The client's Idempotency-Key: a retried submission returns this job.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    callback_url: Mapped[str | None] = mapped_column(
        String(2048), doc="Where the job's final status is POSTed when it ends (shared/webhooks.py).")

    redact: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default="0",
        doc="PII redaction asked at submission: each file's texts are redacted when the file settles "
            "(shared/analytics).")
    word_timings: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default="0",
        doc="Word timings asked at submission (default SPEECHQ_WORD_TIMINGS): the GPU worker aligns this job's "
            "segments and stores results.words (workers/models/alignment.py).")

    files: Mapped[list[File]] = relationship(back_populates="job", order_by="File.name")


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_job_state", "job_id", "state"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(1024))
    archive_id: Mapped[str | None] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(2048), doc="Where the original bytes lie (spool or import root).")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    duplicate_of: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL"), doc="Same audio (sha256) as this earlier file of the job.")
    state: Mapped[FileState] = mapped_column(_enum(FileState), default=FileState.queued)
    error: Mapped[str | None] = mapped_column(Text, doc="Why it failed or was skipped, or a note such as no speech.")
    format: Mapped[str | None] = mapped_column(String(64))
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    num_channels: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    job: Mapped[Job] = relationship(back_populates="files")
    channels: Mapped[list[Channel]] = relationship(back_populates="file", order_by="Channel.index")


class ArchiveState(str, enum.Enum):
    queued = "queued"
    expanding = "expanding"
    done = "done"
    failed = "failed"


class Archive(Base):
    """An uploaded zip/tar: its members become files when an ingest worker expands it."""

    __tablename__ = "archives"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(1024))
    path: Mapped[str] = mapped_column(String(2048))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[ArchiveState] = mapped_column(_enum(ArchiveState), default=ArchiveState.queued)
    members: Mapped[int] = mapped_column(Integer, default=0)
    depth: Mapped[int] = mapped_column(Integer, default=0, doc="0 for an upload, 1 for an archive inside it, ...")
    budget_bytes: Mapped[int | None] = mapped_column(BigInteger, doc="Bytes its members may still expand to.")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Channel(Base):
    __tablename__ = "channels"
    __table_args__ = (UniqueConstraint("file_id", "index"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(64))
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    speech_s: Mapped[float] = mapped_column(Float, default=0.0)
    audio_path: Mapped[str | None] = mapped_column(String(2048))

    file: Mapped[File] = relationship(back_populates="channels")
    segments: Mapped[list[Segment]] = relationship(back_populates="channel", order_by="Segment.start_ms")


class Segment(Base):
    __tablename__ = "segments"
    __table_args__ = (
        Index("ix_segments_state_batch", "state", "batch_id"),
        Index("ix_segments_file", "file_id"),
        Index("ix_segments_batch", "batch_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), index=True)
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    loudness_lufs: Mapped[float | None] = mapped_column(
        Float, doc="Integrated loudness (ITU-R BS.1770, pyloudnorm) of the segment's audio; None under 0.4 s or silent.")
    rms_dbfs: Mapped[float | None] = mapped_column(Float, doc="RMS level of the segment's audio in dBFS.")
    state: Mapped[SegmentState] = mapped_column(_enum(SegmentState), default=SegmentState.pending)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    channel: Mapped[Channel] = relationship(back_populates="segments")
    result: Mapped[Result | None] = relationship(back_populates="segment", uselist=False)

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000.0


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    state: Mapped[BatchState] = mapped_column(_enum(BatchState), default=BatchState.queued, index=True)
    path: Mapped[str] = mapped_column(String(2048))
    num_segments: Mapped[int] = mapped_column(Integer)
    audio_seconds: Mapped[float] = mapped_column(Float)
    padded_seconds: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), doc="When a GPU worker last claimed it: done minus this is its busy time.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ModelVersion(Base):
    """Provenance: which weights produced a result (ARCHITECTURE.md, contract 9)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    revision: Mapped[str | None] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    random_weights: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Result(Base):
    """One row per segment: SenseVoice (text, language, emotion, event) and emotion2vec (label, scores).

    Keyed by segment so that a redelivered batch overwrites rather than duplicates.
    """

    __tablename__ = "results"

    segment_id: Mapped[str] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str | None] = mapped_column(String(16))
    emotion: Mapped[str | None] = mapped_column(String(32))
    event: Mapped[str | None] = mapped_column(String(32))
    itn: Mapped[bool | None] = mapped_column(Boolean)
    emotion2vec_label: Mapped[str | None] = mapped_column(String(32))
    emotion2vec_scores: Mapped[dict | None] = mapped_column(JSON)
    words: Mapped[list | None] = mapped_column(
        JSON, doc='Word timings, [{"w": text, "start_s": s, "end_s": s}] in seconds of the file (funasr\'s '
        "output_timestamp=True); None when the job did not ask for them (jobs.word_timings).")
    asr_model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    emotion_model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    segment: Mapped[Segment] = relationship(back_populates="result")
    asr_model: Mapped[ModelVersion | None] = relationship(foreign_keys=[asr_model_id])
    emotion_model: Mapped[ModelVersion | None] = relationship(foreign_keys=[emotion_model_id])


class DeliveryState(str, enum.Enum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"  # gave up after SPEECHQ_WEBHOOK_MAX_ATTEMPTS


class WebhookDelivery(Base):
    """The webhook outbox: one row per POST to make, written in the transaction that ends the job, sent
    (and retried with backoff until a 2xx) by the reconciler (shared/webhooks.py)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id, doc="The delivery id header.")
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    event: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text, doc="The JSON body, fixed when the row is written.")
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState), default=DeliveryState.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer, doc="HTTP status of the last attempt.")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """An API key: the secret itself is never stored, only its salted KDF hash (api/keys.py).

    Rows are kept when a key is revoked, so that the jobs it owns still name it.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, doc="Public lookup id, the key's middle part.")
    name: Mapped[str] = mapped_column(String(255))
    admin: Mapped[bool] = mapped_column(Boolean, default=False, doc="Sees and manages every job, and health details.")
    salt: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CallMetrics(Base):
    """A file's call metrics (shared/analytics/metrics.py, docs/METRICS.md), written when its job ends."""

    __tablename__ = "call_metrics"

    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Redaction(Base):
    """One PII span replaced in a segment's text (job option `redact`), with the time it covers in the audio:
    the words' times where the segment has word timings, else the whole segment."""

    __tablename__ = "redactions"
    __table_args__ = (Index("ix_redactions_file", "file_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    segment_id: Mapped[str] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"))
    channel_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), doc="CARD, PHONE, EMAIL or NUMBER.")
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    timing: Mapped[str] = mapped_column(String(16), doc="'words' (from word timings) or 'segment'.")
