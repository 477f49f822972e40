"""Job commands: submit, status, results."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import httpx
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.cli.app import ApiOpt, api_url, app, console


def submit_paths(api: str, paths: list[Path], labels: str | None, language: str | None, name: str | None) -> dict:
    files = [("files", (p.name, open(p, "rb"))) for p in paths]
    data = {k: v for k, v in {"channel_labels": labels, "language": language, "name": name}.items() if v}
    try:
        r = httpx.post(f"{api}/v1/jobs", files=files, data=data, timeout=600)
    finally:
        for _, (_, f) in files:
            f.close()
    if r.status_code != 201:
        raise typer.BadParameter(f"the API refused the job ({r.status_code}): {r.text}")
    return r.json()


def wait_for(api: str, job_id: str, timeout: float | None = None) -> dict:
    deadline = time.monotonic() + timeout if timeout else None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"job {job_id[:8]}", total=None, info="")
        while True:
            st = httpx.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
            total = max(st["audio_seconds_total"], 0.001)
            bar.update(task, total=total if st["files_total"] else None, completed=st["audio_seconds_done"],
                       info=f"{st['state']}: files {st['files_done']}+{st['files_failed']} failed"
                            f"/{st['files_total']}, audio {st['audio_seconds_done']:.0f}/{st['audio_seconds_total']:.0f} s")
            if st["state"] in ("done", "failed", "cancelled"):
                return st
            if deadline and time.monotonic() > deadline:
                raise typer.Exit(code=2)
            time.sleep(1)


@app.command()
def submit(paths: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Audio files or zip/tar")],
           wait: Annotated[bool, typer.Option(help="Show progress until the job ends, then a summary")] = False,
           labels: Annotated[Optional[str], typer.Option(help="Channel labels, e.g. agent,customer")] = None,
           language: Annotated[Optional[str], typer.Option(help="auto, en, zh, yue, ja, ko")] = None,
           name: Annotated[Optional[str], typer.Option()] = None,
           api: ApiOpt = None) -> None:
    """Upload files or archives as one job."""
    url = api_url(api)
    job = submit_paths(url, paths, labels, language, name)
    console.print(f"job [bold]{job['id']}[/] queued: {len(paths)} upload(s)")
    if wait:
        st = wait_for(url, job["id"])
        show_results(url, job["id"], st)


def show_results(url: str, job_id: str, status: dict | None = None, limit: int = 8) -> None:
    res = httpx.get(f"{url}/v1/jobs/{job_id}/results", timeout=60).json()
    st = status or res["job"]
    console.print(f"job {job_id}: [bold]{st['state']}[/], files {st['files_done']} done, "
                  f"{st['files_failed']} failed of {st['files_total']}, {st['audio_seconds_total']:.1f} s of audio")
    if res.get("warning"):
        console.print(f"[bold red]{res['warning']}[/]")
    for m in res["models"]:
        console.print(f"  model {m['name']} sha256 {m['sha256'][:12]}…" + ("  [red](RANDOM weights)[/]" if m["random_weights"] else ""))
    for f in res["files"]:
        console.print(f"[bold]{f['name']}[/] {f['state']}" + (f" — {f['error']}" if f["error"] else "")
                      + (f" ({f['format']}, {f['sample_rate']} Hz, {f['num_channels']} ch, {f['duration_s']:.1f} s)"
                         if f["format"] else ""))
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("channel", "start", "end", "lang", "emotion", "event", "e2v", "text"):
            table.add_column(col, overflow="fold", max_width=60 if col == "text" else None)
        rows = 0
        for c in f["channels"]:
            for s in c["segments"][:limit]:
                table.add_row(c["label"], f"{s['start_ms'] / 1000:.2f}", f"{s['end_ms'] / 1000:.2f}",
                              s["language"] or "-", s["emotion"] or "-", s["event"] or "-",
                              s["emotion2vec_label"] or "-", (s["text"] or "")[:60])
                rows += 1
        if rows:
            console.print(table)


@app.command()
def status(job_id: str, api: ApiOpt = None) -> None:
    """Print a job's status as JSON."""
    r = httpx.get(f"{api_url(api)}/v1/jobs/{job_id}", timeout=30)
    console.print_json(r.text)


@app.command()
def results(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False, api: ApiOpt = None) -> None:
    """Print a job's results (a table, or the API's JSON)."""
    url = api_url(api)
    if as_json:
        sys.stdout.write(httpx.get(f"{url}/v1/jobs/{job_id}/results", timeout=60).text + "\n")
    else:
        show_results(url, job_id, limit=1000)
