"""The GPU worker's optimisation options: built from the settings once, validated, handed to the
engine, which applies them to the models. An invalid combination is refused when the worker
starts, with the setting to change; nothing is silently downgraded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class InvalidOptions(ValueError):
    """A combination of GPU settings that cannot run; the message names the setting to change."""


@dataclass(frozen=True)
class Options:
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    compile: Literal["off", "layers", "model"] = "layers"
    cuda_graphs: bool = True
    packed: bool = True
    batch_seconds: float = 1200.0  # the packer's budget: the largest batch the warm-up must meet
    max_segment_seconds: float = 30.0
    memory_gb: float | None = None  # the GPU worker's memory budget; the card less a margin when None

    @classmethod
    def from_settings(cls, settings, device: torch.device) -> Options:
        """The settings' options for `device`. The CPU (tests, a machine without CUDA) always runs
        fp32 eager without graphs: compilation and graphs are CUDA optimisations."""
        if device.type != "cuda":
            return cls(dtype="fp32", compile="off", cuda_graphs=False, packed=settings.gpu_packed,
                       batch_seconds=settings.batch_seconds, max_segment_seconds=settings.max_segment_seconds)
        return cls(dtype=settings.dtype, compile=settings.compile, cuda_graphs=settings.gpu_cuda_graphs,
                   packed=settings.gpu_packed, batch_seconds=settings.batch_seconds,
                   max_segment_seconds=settings.max_segment_seconds,
                   memory_gb=settings.gpu_memory_gb).validated(device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def validated(self, device: torch.device) -> Options:
        if self.dtype not in DTYPES:
            raise InvalidOptions(f"SPEECHQ_DTYPE={self.dtype}: use one of {', '.join(DTYPES)}")
        if self.compile not in ("off", "layers", "model"):
            raise InvalidOptions(f"SPEECHQ_COMPILE={self.compile}: use off, layers or model")
        if self.packed and self.compile == "model":
            raise InvalidOptions("SPEECHQ_COMPILE=model compiles the padded forward: the packed layout is built on "
                                 "the host. Set SPEECHQ_GPU_PACKED=false with it, or SPEECHQ_COMPILE=layers")
        if self.cuda_graphs:
            if device.type != "cuda":
                raise InvalidOptions("SPEECHQ_GPU_CUDA_GRAPHS=true needs a CUDA device")
            if not self.packed:
                raise InvalidOptions("SPEECHQ_GPU_CUDA_GRAPHS=true replays the packed encoder: it needs "
                                     "SPEECHQ_GPU_PACKED=true")
            if self.dtype == "fp32":
                raise InvalidOptions("SPEECHQ_GPU_CUDA_GRAPHS=true replays FlashAttention's variable-length kernel, "
                                     "which needs SPEECHQ_DTYPE=bf16 or fp16")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise InvalidOptions(f"SPEECHQ_GPU_MEMORY_GB={self.memory_gb:g}: must be more than 0 (unset: the card's "
                                 "memory less 1 GiB)")
        if self.batch_seconds < self.max_segment_seconds:
            raise InvalidOptions(f"SPEECHQ_BATCH_SECONDS={self.batch_seconds:g} is below SPEECHQ_MAX_SEGMENT_SECONDS="
                                 f"{self.max_segment_seconds:g}: no batch could hold a long segment")
        return self
