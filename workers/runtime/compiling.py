"""torch.compile as the engine applies it: a whole forward ("model") or each repeated layer
("layers", torch's regional compilation: the layer function is compiled once and reused for every
layer of its kind; the glue between layers stays eager)."""

from __future__ import annotations

import torch


def compiled(fn):
    """`fn` compiled with dynamic shapes (one graph serves every batch size and length)."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    # torch 2.11's tiling analysis asserts on dynamic shapes in these graphs; it is an optimisation only.
    inductor.triton.coalesce_tiling_analysis = False
    # one layer function serves every bucket shape: let it hold a graph per shape
    dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 1024)
    return torch.compile(fn, dynamic=True)


def batch_dynamic(*tensors: torch.Tensor) -> None:
    """Keep the batch dimension symbolic in a compiled graph (a no-op in eager mode, and inside a region that is
    itself being compiled, where dynamo may not trace the marking and every dimension is already dynamic)."""
    if torch.compiler.is_compiling():
        return
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)
