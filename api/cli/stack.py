"""Stack commands: up, selfcheck, migrate, demo."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from api.cli.app import app, console
from api.cli.jobs import show_results, submit_paths, wait_for
from shared.config import get_settings


@app.command()
def up(gpus: Annotated[Optional[str], typer.Option(help="CUDA device ids, e.g. 0,1 (default: all)")] = None,
       flower: Annotated[bool, typer.Option(help="Start Flower on SPEECHQ_FLOWER_PORT")] = True) -> None:
    """Start everything on this machine: Valkey (if REDIS_URL is unset), API, workers, Flower.

    Checks its preconditions first and refuses to start, with the fixing command, when one fails.
    Ctrl-C or SIGTERM stops every process it started (exit 0); exit 1 when it cannot start or a
    process keeps crashing."""
    from api.stack import Stack

    settings = get_settings()
    console.print(f"data folder: {settings.data_dir.resolve()}", highlight=False)
    _preflight(settings, flower)
    stack = Stack(settings, gpus=gpus, flower=flower)
    _run(stack, lambda: console.print(
        f"[green]speechq is up[/] (the workers load their models now; each logs a 'ready' line below, and "
        f"jobs sent before that wait for them): API {stack.api_url}/docs"
        + (f", Flower http://127.0.0.1:{settings.flower_port} ({_flower_login(settings)})" if flower else "")
        + f"; logs in {stack.log_dir}  (Ctrl-C stops)", highlight=False))


@app.command()
def selfcheck() -> None:
    """Check the installation: torchaudio's native library, the FSMN-VAD model on a second of audio, ffmpeg."""
    from api import preflight

    checks = preflight.selfcheck(get_settings())
    table = Table("check", "", "detail", show_lines=False)
    for c in checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", escape(c.message))
    console.print(table)
    if _report(preflight.failures(checks)):
        raise typer.Exit(1)


def _flower_login(settings) -> str:
    from api.launcher import flower_credentials

    credentials, path = flower_credentials(settings)
    user = credentials.split(":", 1)[0]
    return f"user {user}, password in {path}" if path else f"user {user}, password from SPEECHQ_FLOWER_BASIC_AUTH"


def _preflight(settings, flower: bool) -> None:
    from api import preflight

    if _report(preflight.failures(preflight.for_up(settings, flower))):
        console.print("[red]speechq did not start[/]")
        raise typer.Exit(1)


def _report(failed) -> bool:
    for c in failed:
        console.print(f"[red]✗ {c.name}[/]: {escape(c.message)}", highlight=False)
        if c.fix:
            console.print(f"  fix: [bold]{escape(c.fix)}[/]", highlight=False)
    return bool(failed)


def _run(stack, announce, work=None) -> None:
    """Start the stack, announce it, then `work()` or supervise until a signal; always stop it."""
    from api.stack import StackFailed, stop_on_signals

    failed = False
    with stop_on_signals():
        try:
            stack.start()
            announce()
            if work is not None:
                work()
            else:
                stack.run_forever()
        except KeyboardInterrupt:
            console.print("stopping…")
        except StackFailed as exc:
            failed = True
            console.print(f"[red]speechq is stopping[/]: {escape(str(exc))}", highlight=False)
        finally:
            stack.stop()
    if failed:
        raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Apply database migrations (the API and `up` do this on start)."""
    from shared.db import migrate as run

    run()


@app.command()
def demo(size: Annotated[str, typer.Option(help="Random model size if no models exist: tiny or full")] = "tiny",
         keep: Annotated[bool, typer.Option(help="Leave the stack running afterwards")] = False) -> None:
    """Start the stack, process synthesised sample calls (stereo G.711 + a zip), show the results."""
    from api.stack import Stack
    from shared import samples

    settings = get_settings()
    _ensure_models(size)
    _preflight(settings, flower=True)
    stack = Stack(settings, flower=True)

    def work() -> None:
        work_dir = Path(tempfile.mkdtemp(prefix="speechq-demo-"))
        calls = samples.demo_set(work_dir)
        archive = work_dir / "more-calls.zip"
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

    _run(stack, lambda: console.print(f"[green]stack up[/]: API {stack.api_url}/docs, "
                                      f"Flower http://127.0.0.1:{settings.flower_port} ({_flower_login(settings)})"),
         work)


def _ensure_models(size: str) -> None:
    from shared.models import random_init

    s = get_settings()
    for target, writer in ((s.sensevoice_dir, random_init.write_sensevoice),
                           (s.emotion2vec_dir, random_init.write_emotion2vec)):
        if not (target / "model.pt").exists():
            console.print(f"[yellow]no model at {target}: writing RANDOM {size} weights "
                          "(run `speechq models pull` where the model hub is reachable)[/]")
            writer(target, size)
