"""Find, load and verify the three models; record their provenance.

Models load through funasr (it builds the architecture from config.yaml), then every tensor of
the built model is compared with the checkpoint: funasr's own loader skips mismatches silently.
Fetching and importing folders: shared.models.install.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.models import weights
from shared.models.weights import sha256_file  # noqa: F401 - part of this module's interface

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
    """Which weights produced a result: the one record of it, stored as a ModelVersion row,
    published on a GPU worker's heartbeat and shown by the API (api.schemas.ModelInfo)."""
    name: str
    revision: str | None
    sha256: str
    random_weights: bool
    path: str

    def record(self) -> dict:
        """The fields every result carries (the folder's path stays on this machine)."""
        return {"name": self.name, "revision": self.revision, "sha256": self.sha256,
                "random_weights": self.random_weights}


def provenance(spec: ModelSpec, directory: Path) -> Provenance:
    """Which weights a folder holds. Random is decided from model.pt itself (speechq's embedded
    marker), or from the marker file of an earlier version; cached until model.pt changes."""
    directory = Path(directory)
    info = weights.inspect(directory / "model.pt")
    random_weights = info.random or (directory / weights.RANDOM_MARKER).exists()
    revision = None
    conf = directory / "configuration.json"
    if conf.exists():
        revision = json.loads(conf.read_text(encoding="utf-8")).get("revision")
    return Provenance(
        name=spec.hub_id,
        revision=revision or ("random" if random_weights else None),
        sha256=info.sha256,
        random_weights=random_weights,
        path=str(directory),
    )


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line, for messages an operator reads."""
    text = " ".join(str(exc).split()) or "no details"
    text = f"{exc.__class__.__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    try:
        state = weights.load_state(checkpoint)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say so in one line
        raise ModelLoadError(f"{checkpoint}: not a readable checkpoint ({one_line(exc)})") from exc
    if isinstance(scope_map, str):
        scope_map = scope_map.split(",")
    prefixes = [p for p in list(scope_map)[::2] if p and p.lower() != "none"] + ["module."]
    problems = []
    used = {weights.MARKER_KEY}
    for name, tensor in model.state_dict().items():
        src = next((p + name for p in [""] + prefixes if p + name in state), None)
        if src is None:
            problems.append(f"missing in checkpoint: {name}")
            continue
        used.add(src)
        ref = state[src]
        if tuple(ref.shape) != tuple(tensor.shape):
            problems.append(f"shape of {name}: model {tuple(tensor.shape)} vs checkpoint {tuple(ref.shape)}")
        elif not torch.equal(ref.to(tensor.device, tensor.dtype), tensor):
            problems.append(f"values of {name} differ from the checkpoint")
    if problems:
        head = "; ".join(problems[:5])
        raise ModelLoadError(f"{checkpoint}: {len(problems)} tensors do not match the model ({head})")
    unused = sorted(k for k in state if k not in used) if isinstance(state, dict) else []
    if unused:
        log.warning("%s: %d checkpoint tensors are not part of the model built from config.yaml (e.g. %s)",
                    checkpoint, len(unused), ", ".join(unused[:3]))
    log.info("verified %d tensors against %s", len(model.state_dict()), checkpoint)
