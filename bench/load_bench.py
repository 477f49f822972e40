"""The API under load: many concurrent uploaders and pollers, then one large zip while latency is sampled.

Phase "jobs": `--jobs` small uploads from `--uploaders` concurrent clients (each with an Idempotency-Key,
retried with it on a lost connection or a 503, as `speechq submit` does) while `--pollers` clients read job
status; it reports errors, submission and status latency, and whether every job stored is one whose id
its client was told. Phase "zip": one zip of `--files` short recordings is submitted and processed while
the pollers go on; status latency is reported per time window (flat means the p99 does not climb).

It starts the stack itself (embedded Valkey and SQLite in a temporary folder, or `--database-url` /
`--redis-url`; CPU workers; tiny random-weight models as the tests use), or measures a running API (`--api`).
Every request carries an API key, as a deployment's clients do (the stack started here creates one; with
`--api`, pass `--api-key` or leave it out for a keyless loopback API). The stack started here allows
`--jobs` jobs in flight (SPEECHQ_MAX_JOBS_IN_FLIGHT), since all of them come from one key.
Bounded: `--time-limit` seconds for everything.

    python -m bench.load_bench --jobs 200 --uploaders 20 --pollers 8 --files 10000 --time-limit 900
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import random
import shutil
import socket
import tempfile
import time
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Optional
from unittest import mock

import httpx
import numpy as np
import soundfile as sf
import typer
from rich.console import Console
from rich.table import Table

from bench.common import commit, utterances

console = Console()
app = typer.Typer(add_completion=False)
ENDED = ("done", "failed", "cancelled")


def wav_bytes(seconds: float, seed: int, rate: int = 8000) -> bytes:
    """A short mono 8 kHz 16-bit recording of speech-like noise, as a call center stores it."""
    audio = utterances(1, seed=seed, low=seconds, high=seconds, rate=rate)[0]
    out = io.BytesIO()
    sf.write(out, audio, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def zip_bytes(files: int, seconds: float) -> bytes:
    out = io.BytesIO()
    clips = [wav_bytes(seconds, seed=i) for i in range(16)]  # 16 different clips, each under many names
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for i in range(files):
            clip = bytearray(clips[i % 16])
            clip[-2:] = i.to_bytes(2, "little", signed=False) if i < 65536 else clip[-2:]  # distinct sha256
            z.writestr(f"calls/{i // 1000:02d}/call{i:05d}.wav", bytes(clip))
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


@dataclass
class Samples:
    """Latencies (seconds) with the time each was taken, and errors by kind."""

    times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, started: float, latency: float) -> None:
        self.times.append(started)
        self.latencies.append(latency)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def between(self, start: float, end: float) -> list[float]:
        return [lat for t, lat in zip(self.times, self.latencies) if start <= t < end]

    def summary(self) -> dict:
        return {"requests": len(self.latencies), "errors": sum(self.errors.values()), "error_kinds": self.errors,
                "p50_ms": pct(self.latencies, 50), "p99_ms": pct(self.latencies, 99),
                "max_ms": max(self.latencies, default=float("nan")) * 1000}


class Load:
    def __init__(self, http: httpx.AsyncClient, run: str, poll_interval: float):
        self.http, self.run, self.poll_interval = http, run, poll_interval
        self.submit, self.status = Samples(), Samples()
        self.told: list[str] = []  # ids returned to the uploaders
        self.retries = 0
        self.watch: list[str] = []  # what the pollers read
        self.stop = asyncio.Event()

    async def post(self, files: list, name: str, timeout: float = 120) -> str | None:
        """One submission: retried with its key on a lost connection or a 503 (at most 5 tries)."""
        key = str(uuid.uuid4())
        started = time.monotonic()
        for attempt in range(5):
            try:
                r = await self.http.post("/v1/jobs", files=files, data={"name": name},
                                         headers={"Idempotency-Key": key}, timeout=timeout)
            except httpx.TransportError as exc:
                kind = exc.__class__.__name__
            else:
                if r.status_code in (200, 201):
                    self.submit.add(started, time.monotonic() - started)
                    self.told.append(r.json()["id"])
                    return r.json()["id"]
                kind = f"HTTP {r.status_code}"
                if r.status_code != 503:
                    break
            self.retries += 1
            await asyncio.sleep(0.5 * 2 ** attempt)
        self.submit.error(kind)
        return None

    async def uploader(self, queue: asyncio.Queue, payload: bytes) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            await self.post([("files", (f"call{i:04d}.wav", payload, "audio/wav"))], f"{self.run}-{i:04d}")

    async def poller(self) -> None:
        while not self.stop.is_set():
            ids = self.watch or self.told
            if ids:
                job_id = random.choice(ids)
                started = time.monotonic()
                try:
                    r = await self.http.get(f"/v1/jobs/{job_id}", timeout=30)
                    if r.status_code == 200:
                        self.status.add(started, time.monotonic() - started)
                    else:
                        self.status.error(f"HTTP {r.status_code}")
                except httpx.TransportError as exc:
                    self.status.error(exc.__class__.__name__)
            await asyncio.sleep(self.poll_interval)

    async def stored(self) -> dict[str, str]:
        """This run's jobs in the API's list, whether or not their client was told: id -> state."""
        r = await self.http.get("/v1/jobs", params={"limit": 500}, timeout=120)
        r.raise_for_status()
        return {j["id"]: j["state"] for j in r.json() if (j.get("name") or "").startswith(self.run)}


async def measure(api: str, key: str | None, jobs: int, uploaders: int, pollers: int, files: int, seconds: float,
                  window: float, poll_interval: float, time_limit: float) -> dict:
    deadline = time.monotonic() + time_limit
    run = f"load-{uuid.uuid4().hex[:6]}"
    limits = httpx.Limits(max_connections=uploaders + pollers + 4, max_keepalive_connections=uploaders + pollers)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=api, limits=limits, headers=headers) as http:
        load = Load(http, run, poll_interval)
        polling = [asyncio.create_task(load.poller()) for _ in range(pollers)]
        # Phase 1: many small jobs at once.
        queue: asyncio.Queue = asyncio.Queue()
        for i in range(jobs):
            queue.put_nowait(i)
        payload = wav_bytes(1.0, seed=1)
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(load.uploader(queue, payload) for _ in range(uploaders))),
                               timeout=max(1.0, deadline - time.monotonic()))
        submitted_s = time.monotonic() - started
        while True:
            stored = await load.stored()
            if all(s in ENDED for s in stored.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(5)
        jobs_ended_s = time.monotonic() - started
        phase1 = {"jobs": jobs, "uploaders": uploaders, "pollers": pollers, "submitted_s": round(submitted_s, 1),
                  "all_ended_s": round(jobs_ended_s, 1), "ended": sum(s in ENDED for s in stored.values()),
                  "ids_returned": len(set(load.told)), "jobs_stored": len(stored),
                  "stored_not_returned": len(set(stored) - set(load.told)), "retries": load.retries,
                  "submit": load.submit.summary(), "status": load.status.summary()}
        load.status = Samples()
        # Phase 2: one zip of many short files, processed while the pollers go on.
        phase2 = {"files": files}
        if files:
            body = zip_bytes(files, seconds)
            started = time.monotonic()
            zip_id = await load.post([("files", ("calls.zip", body, "application/zip"))], f"{run}-zip", timeout=600)
            phase2["submit_s"] = round(time.monotonic() - started, 1)
            state = None
            if zip_id:
                load.watch = [zip_id] + load.told
                while time.monotonic() < deadline:
                    st = (await http.get(f"/v1/jobs/{zip_id}", timeout=60)).json()
                    state = st
                    if st["state"] in ENDED:
                        break
                    await asyncio.sleep(2)
            elapsed = time.monotonic() - started
            phase2.update(completed_s=round(elapsed, 1), state=state and state["state"],
                          files_done=state and state["files_done"], files_failed=state and state["files_failed"],
                          status=load.status.summary(), windows=[])
            t = started
            while t < started + elapsed:
                lat = load.status.between(t, t + window)
                if lat:
                    phase2["windows"].append({"from_s": round(t - started), "requests": len(lat),
                                              "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)})
                t += window
        load.stop.set()
        await asyncio.gather(*polling)
    return {"phase_jobs": phase1, "phase_zip": phase2}


@contextmanager
def stack(database_url: str | None, redis_url: str | None, jobs: int, files: int, keep: bool):
    """The whole stack on this machine (CPU workers, tiny random-weight models) in a temporary data folder; yields
    (the stack, an API key created in its database)."""
    from api import keys
    from shared.db import session_scope
    from api.stack import Stack
    from shared.config import Settings, get_settings
    from shared.models import random_init

    data = Path(tempfile.mkdtemp(prefix="speechq-load-"))
    random_init.write_sensevoice(data / "models" / "SenseVoiceSmall", "tiny", seed=1)
    random_init.write_emotion2vec(data / "models" / "emotion2vec_plus_large", "tiny", seed=2)
    env = {"SPEECHQ_DATA_DIR": str(data), "SPEECHQ_API_PORT": str(free_port()),
           "SPEECHQ_EMBEDDED_REDIS_PORT": str(free_port()), "SPEECHQ_MAX_ARCHIVE_MEMBERS": str(max(5000, files + 10)),
           "SPEECHQ_BATCH_SECONDS": "120", "SPEECHQ_BATCH_FLUSH_SECONDS": "2",
           "SPEECHQ_MAX_JOBS_IN_FLIGHT": str(jobs + 10)}
    unset = [k for k in ("DATABASE_URL", "REDIS_URL") if k in os.environ]
    env.update({k: v for k, v in {"DATABASE_URL": database_url, "REDIS_URL": redis_url}.items() if v})
    with mock.patch.dict(os.environ, env):
        for k in unset:
            if k not in env:
                del os.environ[k]
        get_settings.cache_clear()
        s = Stack(Settings(), flower=False)
        try:
            s.start()
            console.print(f"stack up: {s.api_url} (data {data}, ingest processes {s.ingest_concurrency})")
            with session_scope(s.settings.database) as db:
                _row, key = keys.create(db, "load bench")
            yield s, key
        finally:
            s.stop()
            get_settings.cache_clear()
            if not keep:
                shutil.rmtree(data, ignore_errors=True)


def show(result: dict) -> None:
    p1, p2 = result["phase_jobs"], result["phase_zip"]
    t = Table(title=f"load: {p1['jobs']} jobs from {p1['uploaders']} uploaders + {p1['pollers']} pollers, "
                    f"then a zip of {p2['files']} files")
    for col in ("phase", "requests", "errors", "p50 ms", "p99 ms", "max ms", "notes"):
        t.add_column(col, justify="right" if col not in ("phase", "notes") else "left")

    def row(name, s, notes=""):
        t.add_row(name, str(s["requests"]), str(s["errors"]), f"{s['p50_ms']:.0f}", f"{s['p99_ms']:.0f}",
                  f"{s['max_ms']:.0f}", notes)

    row("submit (jobs)", p1["submit"], f"all in {p1['submitted_s']} s; {p1['retries']} retries; "
        f"{p1['ids_returned']} ids returned, {p1['jobs_stored']} stored, {p1['stored_not_returned']} not returned")
    row("status (jobs)", p1["status"], f"{p1['ended']}/{p1['jobs']} ended after {p1['all_ended_s']} s")
    if p2.get("status"):
        row("status (zip)", p2["status"], f"zip {p2['state']}: {p2['files_done']} done, {p2['files_failed']} failed "
            f"in {p2['completed_s']} s (upload {p2['submit_s']} s)")
    console.print(t)
    if p2.get("windows"):
        w = Table(title="status latency while the zip is processed, per window")
        for col in ("from s", "requests", "p50 ms", "p99 ms"):
            w.add_column(col, justify="right")
        for x in p2["windows"]:
            w.add_row(str(x["from_s"]), str(x["requests"]), f"{x['p50_ms']:.0f}", f"{x['p99_ms']:.0f}")
        console.print(w)


@app.command()
def main(jobs: Annotated[int, typer.Option(help="Small jobs to submit in phase 1")] = 200,
         uploaders: Annotated[int, typer.Option(help="Concurrent uploading clients")] = 20,
         pollers: Annotated[int, typer.Option(help="Concurrent status readers")] = 8,
         files: Annotated[int, typer.Option(help="Files in the phase-2 zip (0: skip it)")] = 10000,
         file_seconds: Annotated[float, typer.Option(help="Length of each zip member")] = 0.5,
         window: Annotated[float, typer.Option(help="Seconds per latency window in phase 2")] = 30.0,
         poll_interval: Annotated[float, typer.Option(help="Pause of each poller between reads")] = 0.1,
         time_limit: Annotated[float, typer.Option(help="Seconds for the whole measurement")] = 900.0,
         api: Annotated[Optional[str], typer.Option(help="Measure this running API instead of starting one")] = None,
         api_key: Annotated[Optional[str], typer.Option(envvar="SPEECHQ_API_KEY",
                                                        help="The key for --api (none: a keyless loopback API)")
                            ] = None,
         database_url: Annotated[Optional[str], typer.Option(help="For the stack started here")] = None,
         redis_url: Annotated[Optional[str], typer.Option(help="For the stack started here")] = None,
         keep: Annotated[bool, typer.Option(help="Keep the temporary data folder (logs)")] = False,
         out: Annotated[Optional[Path], typer.Option(help="Write the figures as JSON here")] = None) -> None:
    """Load on the API: errors, latency percentiles, ids returned vs jobs stored, latency while a big zip runs."""
    args = (jobs, uploaders, pollers, files, file_seconds, window, poll_interval, time_limit)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the figures
    if api:
        result = asyncio.run(measure(api, api_key, *args))
    else:
        with stack(database_url, redis_url, jobs, files, keep) as (s, key):
            result = asyncio.run(measure(s.api_url, key, *args))
    result.update(date=date.today().isoformat(), commit=commit(), cpus=os.cpu_count(),
                  database="given" if api else (database_url.split(":", 1)[0] if database_url else "sqlite"))
    show(result)
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"figures in {out}")


if __name__ == "__main__":
    app()
