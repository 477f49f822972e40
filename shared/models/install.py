"""Install SenseVoiceSmall and emotion2vec+ large folders: pull from ModelScope, or import a local folder.

Both build the new folder beside the installed one, check its layout, load it through funasr with
every tensor compared against the checkpoint (registry.load_automodel), and only then swap it in
(shared.models.folders). Any failure before the swap leaves the installed folder as it was, byte
for byte. Random weights never replace real ones unless the caller passes force=True.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
from pathlib import Path

import yaml

from shared.models import folders, weights
from shared.models.random_init import refuse_real_weights
from shared.models.registry import EMOTION2VEC, SENSEVOICE, ModelLoadError, ModelSpec, load_automodel, one_line

log = logging.getLogger(__name__)

SPECS = {spec.key: spec for spec in (SENSEVOICE, EMOTION2VEC)}
_CONFIG_MODELS = {"SenseVoiceSmall": SENSEVOICE, "Emotion2vec": EMOTION2VEC}  # config.yaml `model:`


class ModelFetchError(Exception):
    """The model hub could not be reached or refused the download."""


def pull(spec: ModelSpec, target: Path) -> Path:
    """Download `spec` from ModelScope beside `target`, verify it, then swap it in."""
    from modelscope import snapshot_download

    target = folders.resolve_target(target)
    with folders.staging(target, "pull") as stage:
        log.info("downloading %s (%s) into %s", spec.hub_id, spec.revision, stage)
        try:
            snapshot_download(spec.hub_id, revision=spec.revision, local_dir=str(stage))
        except Exception as exc:  # noqa: BLE001 - the hub client raises many kinds; all mean "no download"
            raise ModelFetchError(f"could not download {spec.hub_id} from ModelScope ({one_line(exc, 160)}); "
                                  f"{target} is unchanged (offline: `speechq models import DIR`)") from exc
        _verify(stage, spec, shown_as=f"the download of {spec.hub_id}", target=target)
        folders.swap_in(stage, target)
    return target


def import_folder(source: Path, target: Path, spec: ModelSpec | None = None, force: bool = False) -> ModelSpec:
    """Copy a model folder in the released layout to `target`, verify the copy, then swap it in.

    `spec` defaults to what the folder says it holds (configuration.json, else config.yaml)."""
    source, target = Path(source).resolve(), folders.resolve_target(target)
    if not source.is_dir():
        raise ModelLoadError(f"{source} is not a folder")
    if source == target or source in target.parents or target in source.parents:
        raise ModelLoadError(f"{source} and {target} overlap: import from a folder outside the installed one")
    found = detect_spec(source)
    spec = spec or found
    if spec is None:
        raise ModelLoadError(f"{source}: cannot tell which model it holds (configuration.json and config.yaml "
                             f"name neither {' nor '.join(s.hub_id for s in SPECS.values())}); pass --model")
    if found is not None and found != spec:
        raise ModelLoadError(f"{source} holds {found.hub_id}, not {spec.hub_id}")
    check_layout(source, spec)  # before copying gigabytes
    if weights.is_random(source):
        refuse_real_weights(target, force)
    with folders.staging(target, "import") as stage:
        log.info("copying %s into %s", source, stage)
        shutil.copytree(source, stage, dirs_exist_ok=True)
        _verify(stage, spec, shown_as=str(source), target=target)
        folders.swap_in(stage, target)
    return spec


def detect_spec(directory: Path) -> ModelSpec | None:
    """Which model a folder holds, from configuration.json's hub name or config.yaml's `model`."""
    directory = Path(directory)
    try:
        conf = json.loads((directory / "configuration.json").read_text(encoding="utf-8"))
        hub_id = (conf.get("model_name_in_hub") or {}).get("ms")
        found = next((s for s in SPECS.values() if s.hub_id == hub_id), None)
        if found:
            return found
    except (OSError, ValueError, AttributeError):
        pass
    try:
        config = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8"))
        return _CONFIG_MODELS.get(config.get("model")) if isinstance(config, dict) else None
    except (OSError, yaml.YAMLError):
        return None


def check_layout(directory: Path, spec: ModelSpec) -> None:
    """The files funasr needs for `spec` are present and not empty."""
    directory = Path(directory)
    absent = [n for n in sorted(required_files(directory, spec)) if not _nonempty(directory / n)]
    if absent:
        raise ModelLoadError(f"{directory} is incomplete for {spec.hub_id}: lacks {', '.join(absent)}")


def required_files(directory: Path, spec: ModelSpec) -> set[str]:
    names = {"config.yaml", "model.pt"} | _named_in_configuration(directory)
    if spec == SENSEVOICE:
        names.add("am.mvn")
        if not any(n.endswith("bpe.model") for n in names):
            names.add(next((p.name for p in sorted(directory.glob("*bpe.model"))), "bpe.model"))
    elif spec == EMOTION2VEC and not any(n.endswith("tokens.txt") for n in names):
        names.add("tokens.txt")
    return names


def _named_in_configuration(directory: Path) -> set[str]:
    """Files configuration.json's file_path_metas points funasr at."""
    path = directory / "configuration.json"
    if not path.exists():
        return set()
    try:
        metas = json.loads(path.read_text(encoding="utf-8")).get("file_path_metas") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{path} is not readable JSON ({one_line(exc)})") from exc
    names, todo = set(), [metas]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, str) and item:
            names.add(item)
    return names


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _verify(stage: Path, spec: ModelSpec, shown_as: str, target: Path) -> None:
    """Layout, then a full load with every tensor compared; errors name `shown_as`, not the staging folder."""
    try:
        check_layout(stage, spec)
        model = load_automodel(stage)
    except Exception as exc:  # noqa: BLE001 - funasr raises anything on a broken folder
        detail = str(exc) if isinstance(exc, ModelLoadError) else f"funasr could not load {stage}: {one_line(exc)}"
        raise ModelLoadError(f"refused: {detail.replace(str(stage), shown_as)}; {target} is unchanged") from exc
    del model
    gc.collect()
    log.info("verified %s for %s", shown_as, spec.hub_id)
