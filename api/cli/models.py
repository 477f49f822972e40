"""Model commands: init-random, pull, import, check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from api.cli.app import console, models_app
from shared.config import get_settings

err_console = Console(stderr=True)
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="sensevoice or emotion2vec")]


def _fail(exc: BaseException) -> NoReturn:
    """One red line on stderr and exit status 1: no traceback for what an operator can fix."""
    err_console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _targets() -> dict[str, Path]:
    s = get_settings()
    return {"sensevoice": s.sensevoice_dir, "emotion2vec": s.emotion2vec_dir}


def _keys(model: str | None) -> list[str]:
    from shared.models.install import SPECS

    if model is not None and model not in SPECS:
        raise typer.BadParameter(f"--model is one of {', '.join(SPECS)}")
    return [model] if model else list(SPECS)


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
        for target in (s.sensevoice_dir, s.emotion2vec_dir):  # refuse before writing either
            random_init.refuse_real_weights(target, force)
        n1 = random_init.write_sensevoice(s.sensevoice_dir, size, seed, force)
        n2 = random_init.write_emotion2vec(s.emotion2vec_dir, size, seed, force, depth, prenet_depth)
    except (random_init.RealWeightsPresent, OSError) as exc:
        _fail(exc)
    console.print(f"SenseVoiceSmall: {n1 / 1e6:.1f} M parameters → {s.sensevoice_dir}\n"
                  f"emotion2vec+ large: {n2 / 1e6:.1f} M parameters → {s.emotion2vec_dir}\n"
                  "[bold red]RANDOM weights[/]: results will be flagged as such.")


@models_app.command("pull")
def models_pull(model: ModelOpt = None) -> None:
    """Download SenseVoiceSmall and emotion2vec+ large from ModelScope (needs the hub).

    Each download goes beside the installed folder and is verified before it replaces it; a failed
    or partial download leaves the installed folder as it was."""
    from shared.models import install, registry

    targets = _targets()
    for key in _keys(model):
        spec, target = install.SPECS[key], targets[key]
        console.print(f"pulling {spec.hub_id} → {target}", highlight=False, soft_wrap=True)
        try:
            install.pull(spec, target)
        except (install.ModelFetchError, registry.ModelLoadError, OSError) as exc:
            _fail(exc)
        console.print(f"{spec.hub_id}: installed, every tensor verified", highlight=False)


@models_app.command("import")
def models_import(source: Annotated[Path, typer.Argument(help="A model folder in the released layout")],
                  model: ModelOpt = None,
                  force: Annotated[bool, typer.Option(help="Let RANDOM weights replace real ones")] = False) -> None:
    """Install a model folder obtained elsewhere (offline installs).

    The model is detected from configuration.json / config.yaml unless --model names it. The folder is
    copied beside the installed one, loaded with every tensor verified, then swapped in; an incomplete
    folder or a mismatched tensor is refused and the installed folder is left as it was."""
    from shared.models import install, random_init, registry

    try:
        if not source.is_dir():
            raise registry.ModelLoadError(f"{source} is not a folder")
        spec = install.SPECS[_keys(model)[0]] if model else install.detect_spec(source)
        if spec is None:
            raise registry.ModelLoadError(f"{source}: cannot tell which model it holds; pass --model "
                                          f"({' or '.join(install.SPECS)})")
        target = _targets()[spec.key]
        install.import_folder(source, target, spec, force=force)
        p = registry.provenance(spec, target)
    except (registry.ModelLoadError, random_init.RealWeightsPresent, OSError) as exc:
        _fail(exc)
    weights = "[bold red]RANDOM weights[/]" if p.random_weights else "released weights"
    console.print(f"{spec.hub_id}: {source} → {target}, sha256 {p.sha256[:16]}, {weights}, every tensor verified",
                  highlight=False, soft_wrap=True)


@models_app.command("check")
def models_check() -> None:
    """Load each model and verify every tensor against its checkpoint; say whether its weights are RANDOM."""
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
            table.add_row(spec.hub_id, str(target), "-", Text(registry.one_line(exc), style="red"))
    console.print(table)
    if failed:
        raise typer.Exit(1)
