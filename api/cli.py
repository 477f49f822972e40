"""The `speechq` command: run the stack, submit work, read results, manage models."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Annotated, Optional

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared import logs
from shared.config import get_settings

app = typer.Typer(help="speechq: speech analytics for call-center audio archives.", no_args_is_help=True)
models_app = typer.Typer(help="Model folders: fetch, create random ones, check.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
log = logging.getLogger("api.cli")
ApiOpt = Annotated[Optional[str], typer.Option("--api", help="API base URL (default: this machine's settings)")]


def _api(url: str | None) -> str:
    s = get_settings()
    return url or f"http://{s.api_host}:{s.api_port}"


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logs.setup("DEBUG" if verbose else None)


@app.command()
def up(gpus: Annotated[Optional[str], typer.Option(help="CUDA device ids, e.g. 0,1 (default: all)")] = None,
       flower: Annotated[bool, typer.Option(help="Start Flower on SPEECHQ_FLOWER_PORT")] = True) -> None:
    """Start everything on this machine: Valkey (if REDIS_URL is unset), API, workers, Flower."""
    from api.stack import Stack

    stack = Stack(get_settings(), gpus=gpus, flower=flower)
    try:
        stack.start()
        s = get_settings()
        console.print(f"[green]speechq is up[/]: API {stack.api_url}/docs"
                      + (f", Flower http://127.0.0.1:{s.flower_port}" if flower else "") + "  (Ctrl-C stops)")
        stack.run_forever()
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        stack.stop()


@app.command()
def migrate() -> None:
    """Apply database migrations (the API and `up` do this on start)."""
    from shared.db import migrate as run

    run()


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
    url = _api(api)
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
    r = httpx.get(f"{_api(api)}/v1/jobs/{job_id}", timeout=30)
    console.print_json(r.text)


@app.command()
def results(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False, api: ApiOpt = None) -> None:
    """Print a job's results (a table, or the API's JSON)."""
    url = _api(api)
    if as_json:
        sys.stdout.write(httpx.get(f"{url}/v1/jobs/{job_id}/results", timeout=60).text + "\n")
    else:
        show_results(url, job_id, limit=1000)


@app.command()
def demo(size: Annotated[str, typer.Option(help="Random model size if no models exist: tiny or full")] = "tiny",
         keep: Annotated[bool, typer.Option(help="Leave the stack running afterwards")] = False) -> None:
    """Start the stack, process synthesised sample calls (stereo G.711 + a zip), show the results."""
    from api.stack import Stack
    from shared import samples

    settings = get_settings()
    _ensure_models(size)
    stack = Stack(settings, flower=True)
    try:
        stack.start()
        console.print(f"[green]stack up[/]: API {stack.api_url}/docs, Flower http://127.0.0.1:{settings.flower_port}")
        work = Path(tempfile.mkdtemp(prefix="speechq-demo-"))
        calls = samples.demo_set(work)
        archive = work / "more-calls.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for p in calls[1:]:
                zf.write(p, f"batch-7/{p.name}")
        job = submit_paths(stack.api_url, [calls[0], archive], "agent,customer", None, "demo")
        console.print(f"submitted job {job['id']}: {calls[0].name} and {archive.name}")
        st = wait_for(stack.api_url, job["id"], timeout=900)
        show_results(stack.api_url, job["id"], st)
        if keep:
            console.print("stack left running; Ctrl-C stops it")
            stack.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


def _ensure_models(size: str) -> None:
    from shared.models import random_init

    s = get_settings()
    for target, writer in ((s.sensevoice_dir, random_init.write_sensevoice),
                           (s.emotion2vec_dir, random_init.write_emotion2vec)):
        if not (target / "model.pt").exists():
            console.print(f"[yellow]no model at {target}: writing RANDOM {size} weights "
                          "(run `speechq models pull` where the model hub is reachable)[/]")
            writer(target, size)


@models_app.command("init-random")
def models_init_random(size: Annotated[str, typer.Option(help="tiny (tests) or full (benchmarks)")] = "tiny",
                       force: Annotated[bool, typer.Option(help="Replace weights speechq did not write")] = False,
                       depth: Annotated[Optional[int], typer.Option(help="emotion2vec blocks (full: 16)")] = None,
                       prenet_depth: Annotated[Optional[int], typer.Option(help="emotion2vec prenet (full: 8)")] = None,
                       seed: int = 0) -> None:
    """Write SenseVoiceSmall and emotion2vec+ large folders with RANDOM weights, released layout."""
    from shared.models import random_init

    if size not in ("tiny", "full"):
        raise typer.BadParameter("size is tiny or full")
    s = get_settings()
    try:
        n1 = random_init.write_sensevoice(s.sensevoice_dir, size, seed, force)
        n2 = random_init.write_emotion2vec(s.emotion2vec_dir, size, seed, force, depth, prenet_depth)
    except random_init.RealWeightsPresent as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1)
    console.print(f"SenseVoiceSmall: {n1 / 1e6:.1f} M parameters → {s.sensevoice_dir}\n"
                  f"emotion2vec+ large: {n2 / 1e6:.1f} M parameters → {s.emotion2vec_dir}\n"
                  "[bold red]RANDOM weights[/]: results will be flagged as such.")


@models_app.command("pull")
def models_pull() -> None:
    """Download SenseVoiceSmall and emotion2vec+ large from ModelScope (needs the hub)."""
    from shared.models import registry

    s = get_settings()
    for spec, target in ((registry.SENSEVOICE, s.sensevoice_dir), (registry.EMOTION2VEC, s.emotion2vec_dir)):
        console.print(f"pulling {spec.hub_id} → {target}")
        registry.pull(spec, target)


@models_app.command("check")
def models_check() -> None:
    """Load each model and verify every tensor against its checkpoint."""
    from shared.models import registry

    s = get_settings()
    table = Table("model", "folder", "sha256", "weights")
    failed = False
    for spec, target in ((registry.VAD, s.vad_model_dir), (registry.SENSEVOICE, s.sensevoice_dir),
                         (registry.EMOTION2VEC, s.emotion2vec_dir)):
        try:
            registry.load_automodel(target)
            p = registry.provenance(spec, target)
            table.add_row(spec.hub_id, str(target), p.sha256[:16], "[red]RANDOM[/]" if p.random_weights else "released")
        except Exception as exc:  # noqa: BLE001 - report every model
            failed = True
            table.add_row(spec.hub_id, str(target), "-", f"[red]{exc}[/]")
    console.print(table)
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
