"""CUDA graphs for a forward whose host-side launch costs more than its device time.

SenseVoice's encoder is 70 small layers. Even compiled, each layer costs about 1 ms of host time
(guards, inductor's wrapper, ~10 kernel launches), so a 1,200 s batch takes longer to queue than
the device takes to run it. A CUDA graph replays the whole forward with one launch.

A graph is captured for fixed shapes, so the caller pads its inputs to a few bucket shapes
(`bucket`) and the cache keeps one graph per key. All graphs share one memory pool, which is safe
because they replay one at a time on one stream; but a later replay of any graph may then reuse the
memory of an earlier one's output, so `run` hands back a copy of the output (queued on the stream
right after the replay), never the graph's own buffer.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def bucket(n: int, per_octave: int = 16, least: int = 256) -> int:
    """`n` rounded up to one of `per_octave` steps per power of two (at most 1/per_octave extra)."""
    if n <= least:
        return least
    step = 1 << max(n.bit_length() - 1 - (per_octave.bit_length() - 1), 0)
    return -(-n // step) * step


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    output: torch.Tensor


class GraphCache:
    """One CUDA graph of a function per shape key, captured on first use (least recently used
    graphs beyond `limit` are dropped)."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self.graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self.pool = None

    def run(self, key: tuple, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """fn(*inputs), replayed from the graph for `key` (inputs of one key have one shape each);
        the result is the caller's own tensor."""
        captured = self.graphs.get(key)
        if captured is None:
            captured = self._capture(key, fn, inputs)
        else:
            self.graphs.move_to_end(key)
            for static, x in zip(captured.inputs, inputs):
                static.copy_(x, non_blocking=True)
        captured.graph.replay()
        return captured.output.clone()

    def _capture(self, key: tuple, fn, inputs) -> _Captured:
        started = time.perf_counter()
        static = [x.clone() for x in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # new shapes compile here, outside the capture
            fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the result writer may wait on events in another thread meanwhile
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = fn(*static)
        if self.pool is None:
            self.pool = graph.pool()
        captured = self.graphs[key] = _Captured(graph, static, output)
        if len(self.graphs) > self.limit:
            self.graphs.popitem(last=False)
        log.info("captured a CUDA graph for shape %s in %.2f s (%d held)", key, time.perf_counter() - started,
                 len(self.graphs))
        return captured
