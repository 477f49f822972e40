"""How the GPU forwards are compiled: the whole forward, or each repeated layer (regional).

"model" compiles one forward with dynamic shapes (minutes of warm-up for SenseVoice's 70 layers).
"layers" compiles the repeated layer function once and reuses it for every layer of that kind
(torch's regional compilation); the glue between layers stays eager. With `dynamic=False` each
new input shape compiles its own specialised kernels, so callers pad to a few bucket shapes.
"""

from __future__ import annotations

from typing import Literal

import torch

Scope = Literal["off", "model", "layers"]


def scope(compile: bool | str) -> Scope:
    """Accepts the old boolean setting: True is "model"."""
    if compile is True:
        return "model"
    if compile is False or compile is None:
        return "off"
    if compile not in ("off", "model", "layers"):
        raise ValueError(f"unknown compile scope {compile!r}")
    return compile  # type: ignore[return-value]


def compiled(fn, dynamic: bool | None = True):
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    # torch 2.11's tiling analysis asserts on dynamic shapes in these graphs; it is an optimisation only.
    inductor.triton.coalesce_tiling_analysis = False
    # one layer function serves every bucket shape: let it hold a graph per shape
    dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 1024)
    return torch.compile(fn, dynamic=dynamic)


def batch_dynamic(*tensors: torch.Tensor) -> None:
    """Let a static-shape compile (dynamic=False) keep one graph for any batch size: the batch
    dimension is symbolic, the lengths stay specialised."""
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)


def bucket_width(longest: int, bucket: int) -> int:
    """The padded length of a batch: its longest segment rounded up to a multiple of `bucket`
    samples (0: no rounding), so that static-shape compiles see a few lengths only."""
    if bucket <= 0:
        return longest
    return -(-longest // bucket) * bucket
