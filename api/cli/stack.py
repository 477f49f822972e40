"""Stack commands: up, migrate, demo."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from api.cli.app import app, console
from api.cli.jobs import show_results, submit_paths, wait_for
from shared.config import get_settings


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
