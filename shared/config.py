"""One settings object, read from the environment (and an optional .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ASSETS = Path(__file__).resolve().parent / "assets"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPEECHQ_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Root of the embedded defaults (DB, spool, models, Redis).")
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "SPEECHQ_DATABASE_URL"),
        description="SQLAlchemy URL; SQLite under data_dir when unset.",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "SPEECHQ_REDIS_URL"),
        description="Celery broker; `speechq up` starts an embedded Valkey server when unset.",
    )
    spool_dir: Path | None = Field(None, description="Shared storage for uploads and batch audio.")
    models_dir: Path | None = Field(None, description="Where model directories live.")
    vad_model_dir: Path = ASSETS / "fsmn-vad"
    vad_precision: Literal["auto", "fp32", "mixed", "bf16"] = Field(
        "auto", description="FSMN-VAD network on the CPU. fp32 and mixed (bf16, with frames near the decision "
                            "threshold recomputed in fp32) give funasr's segments; bf16 alone now and then moves "
                            "a boundary by one 10 ms frame. auto: mixed on CPUs with native bf16, else fp32.")
    vad_block_seconds: float = Field(
        60.0, gt=0, le=600, description="FSMN-VAD works on blocks of this many seconds per stream (memory per "
                                        "channel is about 20 MB per 60 s).")
    vad_threads: int = Field(
        1, ge=1, description="torch CPU threads of a process that runs the VAD (an ingest worker process): "
                             "scale with more worker processes, one per core, not with threads.")
    ingest_group_files: int = Field(
        4, ge=1, description="Files one ingest task takes at once: the VAD runs on all their channels together.")
    sensevoice_model_dir: Path | None = None
    emotion2vec_model_dir: Path | None = None

    import_root: Path | None = Field(None, description="Server-side paths may be submitted only under this root.")
    max_upload_bytes: int = 2 * 1024**3
    max_file_seconds: float = 4 * 3600.0
    max_archive_members: int = 5000
    max_archive_bytes: int = 20 * 1024**3
    max_archive_ratio: float = 200.0
    max_archive_depth: int = Field(2, description="Archives inside archives, this many levels deep at most.")

    channel_labels: str = "agent,customer"
    language: str = "auto"
    use_itn: bool = True

    max_segment_seconds: float = 30.0
    batch_seconds: float = Field(1200.0, description="Padded audio seconds per GPU batch: large enough that the "
                                 "GPU, not the host, sets the pace; peak GPU memory grows with it.")
    batch_flush_seconds: float = 5.0
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="bf16, fp16 or fp32 on CUDA; the CPU always runs fp32.")
    compile: Literal["off", "model", "layers"] = Field(
        "layers", description="torch.compile on CUDA: 'layers' compiles each repeated layer once (regional, about "
        "30 s of warm-up), 'model' the whole padded forward (minutes; needs gpu_packed=false), 'off' runs eager.")
    gpu_packed: bool = Field(True, description="SenseVoice runs a batch's segments end to end (no padding "
                             "arithmetic) rather than padded to the longest.")
    gpu_cuda_graphs: bool = Field(True, description="SenseVoice's packed encoder replays from CUDA graphs, "
                                  "one per bucket of batch shapes, captured on first use (needs gpu_packed and "
                                  "bf16 or fp16). CUDA only: the CPU runs fp32 eager.")
    gpu_write_behind: bool = Field(True, description="Store a batch's results on a side thread while the GPU "
                                                     "runs the next batch.")
    gpu_prefetch: int = Field(1, description="Messages a GPU worker reserves at once (contract 3 says 1).")
    gpu_devices: str | None = Field(None, description="Comma-separated CUDA device ids; all visible when unset.")

    task_deadline_seconds: float = 600.0
    reconcile_interval_seconds: float = 30.0
    max_attempts: int = 3

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    embedded_redis_port: int = 6399

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'speechq.db').resolve()}"

    @property
    def spool(self) -> Path:
        return (self.spool_dir or self.data_dir / "spool").resolve()

    @property
    def models(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()

    @property
    def sensevoice_dir(self) -> Path:
        return self.sensevoice_model_dir or self.models / "SenseVoiceSmall"

    @property
    def emotion2vec_dir(self) -> Path:
        return self.emotion2vec_model_dir or self.models / "emotion2vec_plus_large"

    @property
    def broker(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.embedded_redis_port}/0"

    def labels(self, spec: str | None = None) -> list[str]:
        return [s.strip() for s in (spec or self.channel_labels).split(",") if s.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
