"""One job of many short files: does the rate per file hold from the first files to the last, and does memory stay flat?

It starts the stack as bench/load_bench.py does (embedded Valkey and SQLite in a temporary folder, or
`--database-url` / `--redis-url`; the CPU ingest worker and the gpu-queue worker on the CPU with tiny
random-weight models), writes N distinct short recordings (no two share a sha256), and submits them as
one job: by server path (`--via path`, POST /v1/jobs/paths under SPEECHQ_IMPORT_ROOT) or as one zip
(`--via zip`). While the job runs it polls its status and samples the RSS of the API, ingest and gpu
processes (each with its children). It reports the submit time, the total time, each file's completion
time from the database (`files.updated_at`) as files/s per window of `--window` files (first vs last),
and the RSS at 10 % and at 100 % of the job. Bounded: `--time-limit` seconds after the submission.

    flock /tmp/bench.lock python -m bench.scale_bench --files 10000 --out bench/results/scale.json
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from contextlib import ExitStack
from datetime import date, timezone
from pathlib import Path
from typing import Annotated, Optional
from unittest import mock

import httpx
import numpy as np
import psutil
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, select

from bench.common import commit
from bench.load_bench import ENDED, pct, stack, wav_bytes, zip_bytes

console = Console()
log = logging.getLogger(__name__)
app = typer.Typer(add_completion=False)
ROLES = {"api": "api", "ingest": "ingest", "gpu": "gpu-cpu"}  # role -> the stack's child name
MB = 1024 * 1024


def write_calls(folder: Path, files: int, seconds: float) -> list[str]:
    """`files` distinct recordings under `folder` (16 clips, each made distinct by its last samples);
    returns their paths relative to `folder`."""
    clips = [wav_bytes(seconds, seed=i) for i in range(16)]
    names = []
    for i in range(files):
        clip = bytearray(clips[i % 16])
        clip[-4:] = i.to_bytes(4, "little")  # distinct sha256: no file is deduplicated against another
        name = f"calls/{i // 1000:02d}/call{i:05d}.wav"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(bytes(clip))
        names.append(name)
    return names


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children (a prefork pool's), in MB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return round(total / MB, 1)


def rss_by_role(s) -> dict[str, float]:
    return {role: rss_mb(s.children[name].proc.pid) for role, name in ROLES.items() if name in s.children}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process, its live children and the children it has reaped."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        reaped = root.cpu_times().children_user + root.cpu_times().children_system
    except psutil.NoSuchProcess:
        return float("nan")
    total = reaped
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def cpu_by_role(s) -> dict[str, float]:
    return {role: cpu_seconds(s.children[name].proc.pid) for role, name in ROLES.items() if name in s.children}


def completion_times(database: str, job_id: str) -> list[float]:
    """Epoch seconds at which each of the job's done files was marked done, in order."""
    from shared.schema import File, FileState

    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            stamps = conn.scalars(select(File.updated_at).where(File.job_id == job_id,
                                                                File.state == FileState.done)).all()
    finally:
        engine.dispose()
    return sorted((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp() for t in stamps)


def windows(times: list[float], size: int) -> list[dict]:
    """files/s over each run of `size` consecutive completions (the last run may be shorter): the time
    between the completion before the window and the window's last one."""
    out = []
    for start in range(0, len(times), size):
        chunk = times[start:start + size]
        before = times[start - 1] if start else chunk[0]
        span = chunk[-1] - before
        count = len(chunk) if start else len(chunk) - 1  # the first window starts at its first file
        out.append({"files": f"{start + 1}-{start + len(chunk)}", "seconds": round(span, 1),
                    "files_per_s": round(count / span, 2) if span > 0 else float("nan")})
    return out


def cpu_windows(samples: list[tuple[float, int, dict]], size: int, files: int) -> list[dict]:
    """Per window of `size` files (from the status polls): wall seconds, and the CPU seconds the stack's
    processes spent on it; files per CPU-second does not move when other work shares the cores."""
    out = []
    for start in range(0, files, size):
        end = min(start + size, files)
        a = next((x for x in samples if x[1] >= start), None)
        b = next((x for x in samples if x[1] >= end), None)
        if a is None or b is None or b[1] == a[1]:
            continue
        cpu = {role: round(b[2][role] - a[2][role], 1) for role in b[2]}
        spent = sum(cpu.values())
        out.append({"files": f"{a[1] + 1}-{b[1]}", "wall_s": round(b[0] - a[0], 1), "cpu_s": cpu,
                    "files_per_cpu_s": round((b[1] - a[1]) / spent, 2) if spent > 0 else float("nan")})
    return out


def wait_workers(s, timeout: float = 600) -> float:
    """Until the ingest and gpu workers say `ready` on their heartbeats (models loaded): the job's clock
    starts with warm workers. Returns the seconds waited."""
    from shared import heartbeat

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        states = {b.get("role"): b.get("state") for b in heartbeat.alive(s.settings)}
        if states.get("ingest") == "ready" and states.get("gpu") == "ready":
            return time.monotonic() - started
        s.supervise_once()
        time.sleep(0.5)
    raise RuntimeError(f"the workers were not ready within {timeout:.0f} s: {states}; logs in {s.log_dir}")


def run_job(s, key: str | None, via: str, files: int, seconds: float, imports: Path, time_limit: float,
            poll: float) -> dict:
    http = httpx.Client(base_url=s.api_url, timeout=600, headers={"Authorization": f"Bearer {key}"} if key else {})
    if via == "path":
        names = write_calls(imports, files, seconds)
        started = time.monotonic()
        wall_start = time.time()
        r = http.post("/v1/jobs/paths", json={"paths": names, "name": f"scale-{files}"})
    else:
        body = zip_bytes(files, seconds)
        started = time.monotonic()
        wall_start = time.time()
        r = http.post("/v1/jobs", files=[("files", ("calls.zip", body, "application/zip"))],
                      data={"name": f"scale-{files}"})
    submit_s = time.monotonic() - started
    if r.status_code not in (200, 201):
        raise typer.BadParameter(f"the submission was refused: HTTP {r.status_code} {r.text[:500]}")
    job_id = r.json()["id"]
    console.print(f"job {job_id}: {files} files submitted by {via} in {submit_s:.1f} s")
    rss = {"start": rss_by_role(s)}
    samples: list[tuple[float, int, dict]] = [(0.0, 0, cpu_by_role(s))]  # (seconds, files ended, CPU by role)
    peak = dict(rss["start"])
    status_latency: list[float] = []
    errors: dict[str, int] = {}  # status polls that failed, by kind
    deadline = started + time_limit
    st: dict = {}
    last_print = 0.0
    while time.monotonic() < deadline:
        t = time.monotonic()
        try:
            r = http.get(f"/v1/jobs/{job_id}")
        except httpx.TransportError as exc:
            errors[exc.__class__.__name__] = errors.get(exc.__class__.__name__, 0) + 1
            time.sleep(poll)
            continue
        if r.status_code != 200:
            errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
            log.warning("status poll answered %d: %s", r.status_code, r.text[:300])
            time.sleep(poll)
            continue
        st = r.json()
        status_latency.append(time.monotonic() - t)
        now = rss_by_role(s)
        peak = {k: max(peak.get(k, 0), v) for k, v in now.items()}
        done = st["files_done"] + st["files_failed"] + st.get("files_skipped", 0)
        samples.append((time.monotonic() - started, done, cpu_by_role(s)))
        if "at_10pct" not in rss and done >= files / 10:
            rss["at_10pct"] = now
        if st["state"] in ENDED:
            rss["at_100pct"] = now
            break
        if t - last_print > 30:
            console.print(f"  {time.monotonic() - started:6.0f} s: {st['files_done']} done, "
                          f"{st['files_failed']} failed of {files}; RSS MB {now}")
            last_print = t
        s.supervise_once()
        time.sleep(poll)
    total_s = time.monotonic() - started
    times = completion_times(s.settings.database, job_id)
    return {"job": job_id, "via": via, "files": files, "file_seconds": seconds, "state": st.get("state"),
            "files_done": st.get("files_done"), "files_failed": st.get("files_failed"),
            "submit_s": round(submit_s, 1), "total_s": round(total_s, 1),
            "first_file_s": round(times[0] - wall_start, 1) if times else None,
            "overall_files_per_s": round(len(times) / total_s, 2),
            "rss_mb": rss, "peak_rss_mb": peak,
            "status_errors": errors, "status_p50_ms": round(pct(status_latency, 50), 1), "status_p99_ms": round(pct(status_latency, 99), 1),
            "cpu_samples": samples, "completions": times and [round(t - wall_start, 2) for t in times]}


def show(result: dict, window: int) -> None:
    t = Table(title=f"one job of {result['files']} files ({result['file_seconds']} s each, by {result['via']}): "
                    f"{result['state']}, {result['files_done']} done, {result['files_failed']} failed")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("submit", f"{result['submit_s']} s")
    t.add_row("first file done after submit began", f"{result['first_file_s']} s")
    t.add_row("total (submit to job ended)", f"{result['total_s']} s")
    t.add_row("overall", f"{result['overall_files_per_s']} files/s")
    t.add_row("status poll p50 / p99", f"{result['status_p50_ms']} / {result['status_p99_ms']} ms")
    t.add_row("status polls that failed", str(result["status_errors"] or 0))
    console.print(t)
    w = Table(title=f"completion rate per {window} files (files.updated_at)")
    for col in ("files", "seconds", "files/s"):
        w.add_column(col, justify="right")
    for x in result["windows"]:
        w.add_row(x["files"], str(x["seconds"]), str(x["files_per_s"]))
    console.print(w)
    c = Table(title=f"CPU seconds per {window} files (status polls; api + ingest + gpu processes)")
    for col in ("files", "wall s", "api", "ingest", "gpu", "files per CPU-s"):
        c.add_column(col, justify="right")
    for x in result["cpu_windows"]:
        c.add_row(x["files"], str(x["wall_s"]), *(str(x["cpu_s"].get(r, "-")) for r in ROLES),
                  str(x["files_per_cpu_s"]))
    console.print(c)
    m = Table(title="RSS (MB, each process with its children)")
    m.add_column("role")
    for col in ("start", "at 10 %", "at 100 %", "peak"):
        m.add_column(col, justify="right")
    for role in ROLES:
        cells = [result["rss_mb"].get(k, {}).get(role) for k in ("start", "at_10pct", "at_100pct")]
        cells.append(result["peak_rss_mb"].get(role))
        m.add_row(role, *("-" if c is None else f"{c:.0f}" for c in cells))
    console.print(m)


@app.command()
def main(files: Annotated[int, typer.Option(help="Distinct files in the one job")] = 10000,
         file_seconds: Annotated[float, typer.Option(help="Length of each file")] = 0.5,
         via: Annotated[str, typer.Option(help="path: server paths under the import root; zip: one upload")] = "path",
         window: Annotated[int, typer.Option(help="Files per rate window")] = 1000,
         poll: Annotated[float, typer.Option(help="Seconds between status polls / RSS samples")] = 1.0,
         time_limit: Annotated[float, typer.Option(help="Seconds from the submission to giving up")] = 1200.0,
         database_url: Annotated[Optional[str], typer.Option(help="For the stack started here")] = None,
         redis_url: Annotated[Optional[str], typer.Option(help="For the stack started here")] = None,
         keep: Annotated[bool, typer.Option(help="Keep the temporary data folder (logs)")] = False,
         out: Annotated[Optional[Path], typer.Option(help="Write the figures as JSON here")] = None) -> None:
    """Submit one job of `--files` distinct short files and report the rate per file window and the memory."""
    if via not in ("path", "zip"):
        raise typer.BadParameter("--via is path or zip")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with ExitStack() as cleanup:
        imports = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="speechq-scale-imports-")))
        cleanup.enter_context(mock.patch.dict(os.environ, {"SPEECHQ_IMPORT_ROOT": str(imports),
                                                           "SPEECHQ_MAX_JOB_FILES": str(max(20_000, files))}))
        s, key = cleanup.enter_context(stack(database_url, redis_url, 1, files, keep))  # one job in flight
        console.print(f"workers ready after {wait_workers(s):.0f} s")
        result = run_job(s, key, via, files, file_seconds, imports, time_limit, poll)
        result["ingest_processes"] = s.ingest_concurrency
    result["windows"] = windows(result["completions"] or [], window)
    result["cpu_windows"] = cpu_windows(result.pop("cpu_samples"), window, files)
    result.update(date=date.today().isoformat(), commit=commit(), cpus=os.cpu_count(),
                  load_average_before=load_before, load_average_after=[round(x, 2) for x in os.getloadavg()],
                  database=database_url.split(":", 1)[0] if database_url else "sqlite")
    show(result, window)
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
        console.print(f"figures in {out}")
    rates = [w["files_per_s"] for w in result["windows"] if np.isfinite(w["files_per_s"])]
    if len(rates) >= 2:
        console.print(f"first window {rates[0]} files/s, last window {rates[-1]} files/s "
                      f"(last/first {rates[-1] / rates[0]:.2f})")


if __name__ == "__main__":
    app()
