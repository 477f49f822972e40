"""What a model.pt holds: its sha256, and whether speechq wrote it with random weights.

When speechq writes random weights it embeds a marker in the checkpoint itself: one extra entry,
MARKER_KEY, a uint8 tensor holding JSON (model, size, seed). funasr's loader looks up only the keys
the model has, so the extra entry is ignored when loading, and it travels with the weights wherever
they are copied. The speechq-random.json file beside model.pt is a secondary signal kept for
folders written by earlier versions: it can make weights random; its absence never makes them real.

Inspecting is cheap to repeat: the checkpoint is opened with mmap (tensors are not read), and the
result is cached by the file's identity (path, device, inode, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MARKER_KEY = "speechq.random_weights"
RANDOM_MARKER = "speechq-random.json"  # the file earlier versions relied on; still written, for people
STATE_KEYS = ("state_dict", "model_state_dict", "model")  # wrappers funasr's loader unwraps


@dataclass(frozen=True)
class WeightsInfo:
    sha256: str
    random: bool  # speechq wrote them (embedded marker)
    marker: dict = field(default_factory=dict, compare=False)  # what the embedded marker says


def mark_random(state: dict[str, torch.Tensor], meta: dict) -> dict[str, torch.Tensor]:
    """The state dict with speechq's random-weights marker embedded as one more tensor."""
    payload = json.dumps({**meta, "random": True}, sort_keys=True).encode()
    return {**state, MARKER_KEY: torch.frombuffer(bytearray(payload), dtype=torch.uint8)}


def strip_marker(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k != MARKER_KEY}


def load_state(checkpoint: Path) -> dict:
    """A checkpoint's tensors, unwrapped as funasr unwraps them; lazily read (mmap) where possible.

    weights_only=True: never runs code from a pickle. funasr's own loader uses torch's default
    (weights_only) too, so every checkpoint funasr can load, this can read."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not the zip format (torch < 1.6): no mmap
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in STATE_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def inspect(checkpoint: Path) -> WeightsInfo:
    """sha256 and the random-weights decision for a model.pt, cached until the file changes."""
    path = os.path.realpath(checkpoint)
    st = os.stat(path)
    return _inspect(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def is_random(directory: Path) -> bool:
    """True for weights speechq wrote: embedded marker, or a folder flagged by an earlier version."""
    directory = Path(directory)
    if (directory / RANDOM_MARKER).exists():
        return True
    checkpoint = directory / "model.pt"
    return checkpoint.exists() and inspect(checkpoint).random


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=32)
def _inspect(path: str, dev: int, ino: int, size: int, mtime_ns: int) -> WeightsInfo:
    marker = _embedded_marker(Path(path))
    info = WeightsInfo(sha256=sha256_file(Path(path)), random=marker is not None, marker=marker or {})
    log.debug("%s: sha256 %s, %s", path, info.sha256[:16], "random (speechq)" if info.random else "no marker")
    return info


def _embedded_marker(checkpoint: Path) -> dict | None:
    try:
        state = load_state(checkpoint)
    except Exception as exc:  # noqa: BLE001 - unreadable here means not written by speechq; loading reports it
        log.debug("%s: not readable as plain tensors (%s): no speechq marker", checkpoint, exc.__class__.__name__)
        return None
    value = state.get(MARKER_KEY) if isinstance(state, dict) else None
    if value is None:
        return None
    try:
        return json.loads(value.numpy().tobytes()) if isinstance(value, torch.Tensor) else {"random": True}
    except (ValueError, TypeError):
        return {"random": True}  # the key alone says speechq wrote these weights
