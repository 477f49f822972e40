"""One settings object, read from the environment (and an optional .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
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
    compile_cache_dir: Path | None = Field(
        None, description="torch.compile's cache (Inductor's compiled graphs and Triton's kernels) of the GPU workers, "
                          "kept across restarts; data_dir/compile-cache when unset.")
    vad_model_dir: Path = ASSETS / "fsmn-vad"
    vad_precision: Literal["auto", "fp32", "mixed", "bf16"] = Field(
        "auto", description="FSMN-VAD network on the CPU. fp32 and mixed (bf16, with frames near the decision "
                            "threshold recomputed in fp32) give funasr's segments; bf16 alone now and then moves "
                            "a boundary by one 10 ms frame. auto: mixed on CPUs with native bf16, else fp32.")
    vad_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where an ingest process runs the FSMN-VAD network. cuda (an option for GPU hosts): "
                           "its bf16 pass runs on the host's GPU (the first of SPEECHQ_GPU_DEVICES) and only the "
                           "frames near the threshold are recomputed in fp32 on the CPU, so the segments stay "
                           "funasr's and the CPU keeps only decoding and features.")
    vad_block_seconds: float = Field(
        60.0, gt=0, le=600, description="FSMN-VAD works on blocks of this many seconds per stream (memory per "
                                        "channel is about 20 MB per 60 s).")
    vad_threads: int = Field(
        1, ge=1, description="torch CPU threads of a process that runs the VAD (an ingest worker process): "
                             "scale with more worker processes, one per core, not with threads.")
    ingest_processes: int | None = Field(
        None, ge=1, description="Processes of the ingest worker that `speechq up` starts; default one per core but "
                                "one (the rest of the stack and the GPU worker's host thread need one).")
    ingest_group_files: int = Field(
        4, ge=1, description="Files one ingest task takes at once: the VAD runs on all their channels together.")
    ingest_first_files: int = Field(
        4, ge=0, description="The first files of every job go one per ingest task, so that its first GPU batch "
                             "forms early; the job's later files go in groups of SPEECHQ_INGEST_GROUP_FILES.")
    sensevoice_model_dir: Path | None = None
    emotion2vec_model_dir: Path | None = None

    import_root: Path | None = Field(None, description="Server-side paths may be submitted only under this root.")
    max_upload_bytes: int = 2 * 1024**3
    max_file_seconds: float = 4 * 3600.0
    max_archive_members: int = 5000
    max_archive_bytes: int = 20 * 1024**3
    max_archive_ratio: float = 200.0
    max_archive_depth: int = Field(2, description="Archives inside archives, this many levels deep at most.")
    max_job_files: int = Field(
        20_000, ge=1, description="Files one job may hold: uploads, server paths and archive members together. "
                                  "A submission over it is refused (422); an archive that would pass it fails "
                                  "before any member is extracted.")
    max_jobs_in_flight: int = Field(
        100, ge=1, description="Jobs not yet ended (queued or running) that one API key (keyless mode counts as one "
                               "owner) may have; a submission over it is refused (429 with Retry-After).")
    max_channels: int = Field(
        4, ge=1, description="Channels a recording may have; more fails that file (each channel is decoded, "
                             "segmented and recognised on its own).")
    min_sample_rate: int = Field(
        4000, ge=1, description="The lowest sample rate a recording may declare; lower fails that file. Telephone "
                                "audio is 8 kHz; a header that claims, say, 1 Hz turns a few kilobytes into hours "
                                "of audio to decode, segment and recognise.")
    max_file_spool_bytes: int = Field(
        2 * 1024**3, ge=1, description="Spool one file's decoded audio may take (16 kHz float32, every channel: "
                                       "64,000 bytes per channel-second; 2 GiB holds 4 h of stereo). Enforced "
                                       "while decoding: the file fails as soon as it would pass it.")
    max_job_spool_bytes: int = Field(
        50 * 1024**3, ge=1, description="Spool a job's decoded audio may take at once (a channel's audio leaves "
                                        "the spool when its last segment is batched); a file that would pass it "
                                        "fails with the reason.")
    body_min_bytes_per_second: float = Field(
        16 * 1024, ge=0, description="A request body that arrives slower than this on average, after "
                                     "body_grace_seconds, is cut off (408). 0 turns the deadline off.")
    body_grace_seconds: float = Field(
        30.0, gt=0, description="Seconds every request body may take whatever its rate (the slow-body deadline "
                                "starts after them); also the longest wait for any one piece of a body.")
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="A connection must deliver a request's line and headers within this many seconds "
                                "of its first byte (or of the connection opening); a slower one is closed.")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Request line and headers larger than this are refused (431).")

    channel_labels: str = "agent,customer"
    language: str = "auto"
    use_itn: bool = True
    silence_threshold_seconds: float = Field(
        3.0, gt=0, description="Call metrics: a gap in everyone's speech at least this long counts as a silence "
                               "(count, total and longest per file; docs/METRICS.md).")
    interruption_min_seconds: float = Field(
        0.3, ge=0, description="Call metrics: an overlap begun by the later speaker counts as an interruption when "
                               "it lasts at least this long (shorter ones are still listed as overlaps).")

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
    word_timings: bool = Field(False, description="The default of a job's `word_timings` option (a submission may "
                               "say otherwise): time every token and word of SenseVoice's transcript (funasr's "
                               "output_timestamp=True: a CTC forced alignment on 60 ms frames), stored in the "
                               "results as `words`. Off by default: the alignment runs on the GPU worker's host "
                               "thread and cut the whole stack from 2,055x to 1,333x real time on an H100 "
                               "(BENCHMARKS.md, End to end).")
    gpu_prefetch: int = Field(1, description="Messages a GPU worker reserves at once (contract 3 says 1).")
    gpu_memory_gb: float | None = Field(
        None, description="GPU memory (GiB) one GPU worker may use: its allocator is capped to it and each batch "
                          "is cut into forwards that fit beside the weights (one that still runs out of memory is "
                          "halved and run again). Unset: the card's memory less 1 GiB. A 16 GB card runs whole "
                          "1,200 s batches; smaller budgets cut them.")
    gpu_devices: str | None = Field(None, description="Comma-separated CUDA device ids; all visible when unset.")

    task_deadline_seconds: float = 600.0
    reconcile_interval_seconds: float = 30.0
    max_attempts: int = 3

    webhook_secret: str | None = Field(
        None, description="HMAC-SHA256 key that signs webhook deliveries (header X-Speechq-Signature); a job may "
                          "name a callback_url only when it is set.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="One webhook POST waits this long for an answer.")
    webhook_backoff_seconds: float = Field(
        10.0, gt=0, description="Wait before the first retry of a webhook that did not get a 2xx; doubled each "
                                "attempt up to webhook_backoff_max_seconds.")
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0, description="Longest wait between two webhook attempts.")
    webhook_max_attempts: int = Field(
        30, ge=1, description="A webhook is given up (state failed, logged) after this many attempts without a 2xx "
                              "(about a day at the default backoff).")
    export_page_rows: int = Field(
        2000, ge=1, le=100_000, description="Segments read from the database per page while an export streams: "
                                            "an export holds one page in memory, never the whole job.")

    db_pool_size: int = Field(10, ge=1, description="Database connections each process keeps open (SQLAlchemy "
                              "pool_size); the API's requests each hold one only for their own short transaction.")
    db_max_overflow: int = Field(20, ge=0, description="Connections opened beyond db_pool_size under a burst.")
    db_pool_timeout_seconds: float = Field(10.0, gt=0, description="A request waits this long for a free database "
                                           "connection, then the API answers 503 with Retry-After.")
    db_retry_seconds: float = Field(5.0, ge=0, description="A new database connection (PostgreSQL restarting) is "
                                    "retried for this long before the error is raised; the API then answers 503 "
                                    "with Retry-After.")
    upload_orphan_grace_seconds: float = Field(
        3600.0, ge=0, description="The reconciler removes an upload folder in the spool that has no job, or whose job "
                                  "ended, once nothing in it has changed for this long.")

    api_key: SecretStr | None = Field(
        None, description="The key the `speechq` CLI sends (Authorization: Bearer); create one with "
                          "`speechq keys create`.")
    api_key_cache_seconds: float = Field(
        2.0, ge=0, description="The API remembers a verified key this long, so that a request does not hash it "
                               "again; a revoked key is refused at most this long after `speechq keys revoke`. "
                               "0: every request checks its key in the database.")
    flower_basic_auth: SecretStr | None = Field(
        None, description="user:password that Flower asks for in `speechq up`; unset: a random password is "
                          "written once to data_dir/flower-auth (user speechq) and `up` says where.")
    retention_days: float | None = Field(
        None, gt=0, description="Finished jobs (done, failed, cancelled) are deleted, rows and audio, this many "
                                "days after they ended, by the reconciler. Unset: kept until deleted.")

    api_host: str = Field("127.0.0.1", description="Where the API listens. Anything but loopback requires API "
                                                   "keys: the API refuses to start while none exists.")
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
    def compile_cache(self) -> Path:
        return (self.compile_cache_dir or self.data_dir / "compile-cache").resolve()

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
