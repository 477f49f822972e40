"""Getting models and audio onto the device: weights cast once, audio through a pinned buffer."""

from __future__ import annotations

import copy

import numpy as np
import torch


def prepare(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model in eval mode on `device`; in half precision a cast copy (the original stays fp32),
    cast once rather than on every call as autocast would."""
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    return model.to(device).eval()


_pinned: dict[str, torch.Tensor] = {}


def _staging(numel: int, pinned: bool) -> torch.Tensor:
    """A host buffer reused from batch to batch (pinning memory costs more than copying it)."""
    if not pinned:
        return torch.empty(numel, dtype=torch.float32)
    buf = _pinned.get("audio")
    done = _pinned.get("copied")
    if done is not None:
        done.synchronize()  # the previous upload from this buffer has finished
    if buf is None or buf.numel() < numel:
        buf = torch.empty(max(numel, 1 << 20), dtype=torch.float32, pin_memory=True)
        _pinned["audio"] = buf
    return buf[:numel]


def pad_batch(wavs: list[np.ndarray], device: torch.device,
              width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (B, T) float32 on `device`: segments go up packed end to end, padding happens there.
    T is the longest segment, or `width` where given (a shape bucket; at least the longest)."""
    return upload(stage(wavs, device), device, width)


def stage(wavs: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The host half of pad_batch: segments end to end in a (pinned, reused) host buffer."""
    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.int64)
    flat = _staging(int(lengths.sum()), device.type == "cuda")
    np.concatenate([np.asarray(w, dtype=np.float32) for w in wavs], out=flat.numpy())
    return flat, lengths


def upload(staged: tuple[torch.Tensor, torch.Tensor], device: torch.device,
           width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The device half of pad_batch: one copy up, then padding on the device."""
    flat, lengths = staged
    flat = flat.to(device, non_blocking=True)
    if device.type == "cuda":
        _pinned["copied"] = torch.cuda.Event()
        _pinned["copied"].record()
    host_lengths = lengths
    lengths = to_device(lengths, device)
    width = max(int(host_lengths.max()), width or 0)
    starts = torch.cumsum(lengths, 0) - lengths
    pos = torch.arange(width, device=device)[None, :]
    valid = pos < lengths[:, None]
    index = (starts[:, None] + pos).clamp_max(flat.numel() - 1)
    return torch.where(valid, flat[index], 0.0), lengths


def to_device(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host array on the device without waiting for it: through pinned memory, because a
    copy from pageable memory can block the host until the device has caught up with its queue."""
    values = torch.as_tensor(values)
    if device.type == "cuda":
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


def copied() -> torch.cuda.Event | None:
    """An event after the device-to-host copies queued so far (None on the CPU, where they are done)."""
    if not torch.cuda.is_available():
        return None
    event = torch.cuda.Event()
    event.record()
    return event
