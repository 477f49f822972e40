"""Find, load, verify and fetch the three models; record their provenance.

Models load through funasr (it builds the architecture from config.yaml), then every tensor of
the built model is compared with the checkpoint: funasr's own loader skips mismatches silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.models.random_init import RANDOM_MARKER

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    pass


@dataclass(frozen=True)
class ModelSpec:
    key: str
    hub_id: str
    revision: str = "master"


VAD = ModelSpec("fsmn-vad", "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch")
SENSEVOICE = ModelSpec("sensevoice", "iic/SenseVoiceSmall")
EMOTION2VEC = ModelSpec("emotion2vec", "iic/emotion2vec_plus_large")


@dataclass(frozen=True)
class Provenance:
    name: str
    revision: str | None
    sha256: str
    random_weights: bool
    path: str


def provenance(spec: ModelSpec, directory: Path) -> Provenance:
    directory = Path(directory)
    marker = directory / RANDOM_MARKER
    revision = None
    conf = directory / "configuration.json"
    if conf.exists():
        revision = json.loads(conf.read_text(encoding="utf-8")).get("revision")
    return Provenance(
        name=spec.hub_id,
        revision=revision or ("random" if marker.exists() else None),
        sha256=sha256_file(directory / "model.pt"),
        random_weights=marker.exists(),
        path=str(directory),
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_directory(directory: Path) -> None:
    directory = Path(directory)
    missing = [n for n in ("config.yaml", "model.pt") if not (directory / n).exists()]
    if missing:
        raise ModelLoadError(
            f"model folder {directory} lacks {', '.join(missing)}: run `speechq models pull` "
            "(needs the model hub) or `speechq models init-random` (random weights, for tests)"
        )


def load_automodel(directory: Path, device: str = "cpu", **kwargs):
    """Build a funasr AutoModel from a local folder, offline, and verify its weights."""
    from funasr import AutoModel

    from shared.logs import quiet_third_parties

    quiet_third_parties()
    directory = Path(directory).resolve()
    check_directory(directory)
    os.environ.setdefault("MODELSCOPE_OFFLINE", "1")
    # funasr otherwise sets torch's CPU threads to 4 for the whole process (ncpu), whatever
    # OMP_NUM_THREADS says; with several worker processes per host that oversubscribes the cores.
    kwargs.setdefault("ncpu", torch.get_num_threads())
    model = AutoModel(model=str(directory), disable_update=True, device=device, disable_pbar=True,
                      disable_log=True, log_level="ERROR", **kwargs)
    quiet_third_parties()
    verify_weights(model.model, directory / "model.pt", model.kwargs.get("scope_map") or [])
    model.model.eval()
    return model


def verify_weights(model: torch.nn.Module, checkpoint: Path, scope_map: list[str] | str = ()) -> None:
    """Every tensor of `model` must equal the checkpoint's, under funasr's key mapping."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if isinstance(scope_map, str):
        scope_map = scope_map.split(",")
    prefixes = [p for p in list(scope_map)[::2] if p and p.lower() != "none"] + ["module."]
    problems = []
    for name, tensor in model.state_dict().items():
        src = next((p + name for p in [""] + prefixes if p + name in state), None)
        if src is None:
            problems.append(f"missing in checkpoint: {name}")
            continue
        ref = state[src]
        if tuple(ref.shape) != tuple(tensor.shape):
            problems.append(f"shape of {name}: model {tuple(tensor.shape)} vs checkpoint {tuple(ref.shape)}")
        elif not torch.equal(ref.to(tensor.device, tensor.dtype), tensor):
            problems.append(f"values of {name} differ from the checkpoint")
    if problems:
        head = "; ".join(problems[:5])
        raise ModelLoadError(f"{checkpoint}: {len(problems)} tensors do not match the model ({head})")
    log.info("verified %d tensors against %s", len(model.state_dict()), checkpoint)


def pull(spec: ModelSpec, target: Path) -> Path:
    """Download a model from ModelScope into `target` (needs the hub; not reachable offline)."""
    from modelscope import snapshot_download

    target = Path(target)
    if (target / RANDOM_MARKER).exists():
        (target / RANDOM_MARKER).unlink()
    path = snapshot_download(spec.hub_id, revision=spec.revision, local_dir=str(target))
    check_directory(Path(path))
    return Path(path)
