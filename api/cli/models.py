"""Model commands: init-random, pull, check."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from api.cli.app import console, models_app
from shared.config import get_settings


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
