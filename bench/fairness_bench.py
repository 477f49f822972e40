"""Fairness between jobs (issue 14): how long a small job waits behind a huge one.

It writes N distinct short recordings (a few KB each) under an import root, submits them as one path job,
waits until that job's ingest is under way, then submits a small job of 2 calls and times it from submission to
done. It reports the small job's wait and where the big job stood at that moment (files ended, messages still in
the ingest queue), then cancels the big job.

The stack is started as `bench.load_bench` starts it (embedded Valkey and SQLite in a temporary folder, or
`--database-url` / `--redis-url`; CPU workers; tiny random-weight models). Bounded: `--time-limit` seconds for
everything after the files are written.

    python -m bench.fairness_bench --files 100000 --time-limit 900 --out fairness.json
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Optional
from unittest import mock

import httpx
import redis
import soundfile as sf
import typer
from rich.table import Table

from bench.common import commit, utterances
from bench.load_bench import ENDED, console, stack

app = typer.Typer(add_completion=False)
RATE = 8000


def write_calls(folder: Path, n: int, seconds: float) -> list[str]:
    """n distinct mono 8 kHz WAVs (speech-like noise) under folder, 1,000 a subfolder; their relative paths.
    16 clips are written under many names, each made distinct by its index in its last samples."""
    clips = []
    for seed in range(16):
        out = io.BytesIO()
        sf.write(out, utterances(1, seed=seed, low=seconds, high=seconds, rate=RATE)[0], RATE, format="WAV",
                 subtype="PCM_16")
        clips.append(out.getvalue())
    names = []
    for i in range(n):
        name = f"calls/{i // 1000:03d}/call{i:06d}.wav"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        clip = bytearray(clips[i % 16])
        clip[-4:] = i.to_bytes(4, "little")  # two samples at the end: a distinct sha256 per file
        path.write_bytes(bytes(clip))
        names.append(name)
    return names


def ingest_backlog(broker: str) -> int:
    """Messages waiting in the ingest queue, in whichever priority lists hold them ("ingest", "ingest\\x06\\x16N").
    Scanned rather than named, so that the bench measures code with other priority steps too (FIFO included)."""
    client = redis.Redis.from_url(broker)
    try:
        return sum(client.llen(k) for k in client.scan_iter(match="ingest*", count=1000)
                   if client.type(k) == b"list")
    finally:
        client.close()


def job(http: httpx.Client, job_id: str) -> dict:
    r = http.get(f"/v1/jobs/{job_id}")
    if r.status_code != 200:
        raise RuntimeError(f"status of job {job_id}: HTTP {r.status_code}: {r.text[:500]}")
    return r.json()


def ended(status: dict) -> int:
    return status["files_done"] + status["files_failed"] + status["files_skipped"]


def measure(http: httpx.Client, broker: str, big_paths: list[str], small_paths: list[str], settle: float,
            deadline: float) -> dict:
    out: dict = {"files": len(big_paths)}
    started = time.monotonic()
    r = http.post("/v1/jobs/paths", json={"paths": big_paths, "name": "fairness-big"},
                  timeout=max(10.0, deadline - time.monotonic()))
    r.raise_for_status()
    big = r.json()["id"]
    out["big_submit_s"] = round(time.monotonic() - started, 1)
    console.print(f"big job {big}: {len(big_paths)} files submitted in {out['big_submit_s']} s")
    while job(http, big)["state"] == "queued":  # its ingest has not begun
        if time.monotonic() > deadline:
            raise RuntimeError("the big job's ingest did not start within the time limit")
        time.sleep(0.5)
    time.sleep(settle)  # the workers are well into the big job
    before = job(http, big)
    out.update(big_ended_at_small_submit=ended(before), backlog_at_small_submit=ingest_backlog(broker))
    started = time.monotonic()
    r = http.post("/v1/jobs/paths", json={"paths": small_paths, "name": "fairness-small"}, timeout=120)
    r.raise_for_status()
    small = r.json()["id"]
    out["small_submit_s"] = round(time.monotonic() - started, 2)
    status = r.json()
    while status["state"] not in ENDED and time.monotonic() < deadline:
        time.sleep(0.25)
        status = job(http, small)
    waited = time.monotonic() - started
    at_end = job(http, big)
    out.update(small_state=status["state"], small_files_done=status["files_done"],
               small_done_s=round(waited, 2) if status["state"] in ENDED else None,
               small_waited_s=round(waited, 2), big_ended_at_small_end=ended(at_end),
               backlog_at_small_end=ingest_backlog(broker))
    console.print(f"small job {small}: {status['state']} after {waited:.1f} s; big job: {ended(at_end)} of "
                  f"{len(big_paths)} files ended")
    out["big_state_at_small_end"] = at_end["state"]
    if at_end["state"] not in ENDED:  # in first-come order the big job may well be over by now
        started = time.monotonic()
        http.post(f"/v1/jobs/{big}/cancel", timeout=600).raise_for_status()
        out["big_cancel_s"] = round(time.monotonic() - started, 1)
    return out


def show(result: dict) -> None:
    t = Table(title=f"a small job of 2 calls sent behind a job of {result['files']:,} files "
                    f"({result['ingest_processes']} ingest process(es))")
    for col in ("measure", "value"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    done = result["small_done_s"]
    t.add_row("small job: submission to done",
              f"{done:.1f} s" if done is not None else f"not done after {result['small_waited_s']:.0f} s "
                                                        f"({result['small_state']})")
    t.add_row("big job: submission (API)", f"{result['big_submit_s']:.1f} s")
    t.add_row("big job: files ended when the small job was sent", f"{result['big_ended_at_small_submit']:,}")
    t.add_row("big job: files ended when the small job ended", f"{result['big_ended_at_small_end']:,}")
    t.add_row("ingest messages waiting when the small job was sent", f"{result['backlog_at_small_submit']:,}")
    t.add_row("ingest messages waiting when the small job ended", f"{result['backlog_at_small_end']:,}")
    t.add_row("big job: state when the small job ended", result["big_state_at_small_end"])
    if "big_cancel_s" in result:
        t.add_row("big job: cancel", f"{result['big_cancel_s']:.1f} s")
    console.print(t)


@app.command()
def main(files: Annotated[int, typer.Option(help="Files of the big path job")] = 100_000,
         file_seconds: Annotated[float, typer.Option(help="Length of each file of the big job")] = 0.25,
         small_seconds: Annotated[float, typer.Option(help="Length of each of the small job's 2 calls")] = 5.0,
         settle: Annotated[float, typer.Option(help="Seconds between the big job's start and the small job")] = 10.0,
         time_limit: Annotated[float, typer.Option(help="Seconds for the measurement (after files are written)")]
         = 900.0,
         database_url: Annotated[Optional[str], typer.Option(help="For the stack started here")] = None,
         redis_url: Annotated[Optional[str], typer.Option(help="For the stack started here")] = None,
         keep: Annotated[bool, typer.Option(help="Keep the temporary data folder (logs)")] = False,
         out: Annotated[Optional[Path], typer.Option(help="Write the figures as JSON here")] = None) -> None:
    """A small job's time to done behind a huge job, and the huge job's progress at that moment."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    imports = Path(tempfile.mkdtemp(prefix="speechq-fair-"))
    try:
        started = time.monotonic()
        big_paths = write_calls(imports, files, file_seconds)
        small_paths = []
        for i, clip in enumerate(utterances(2, seed=99, low=small_seconds, high=small_seconds, rate=RATE)):
            sf.write(imports / f"small{i}.wav", clip, RATE, subtype="PCM_16")
            small_paths.append(f"small{i}.wav")
        console.print(f"{files:,} files written in {time.monotonic() - started:.0f} s under {imports}")
        env = {"SPEECHQ_IMPORT_ROOT": str(imports), "SPEECHQ_MAX_JOB_FILES": str(files + 10)}
        with mock.patch.dict(os.environ, env), stack(database_url, redis_url, 2, 0, keep) as (s, key):
            deadline = time.monotonic() + time_limit
            with httpx.Client(base_url=s.api_url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:
                result = measure(http, s.settings.broker, big_paths, small_paths, settle, deadline)
            result["ingest_processes"] = s.ingest_concurrency
    finally:
        shutil.rmtree(imports, ignore_errors=True)
    result.update(date=date.today().isoformat(), commit=commit(), cpus=os.cpu_count(), file_seconds=file_seconds,
                  small_seconds=small_seconds, settle_s=settle, time_limit_s=time_limit,
                  database=database_url.split(":", 1)[0] if database_url else "sqlite")
    show(result)
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"figures in {out}")


if __name__ == "__main__":
    app()
