"""The GPU worker's memory budget: how much of the card it may use, and how much audio one forward may
hold inside it.

The budget caps PyTorch's caching allocator (`set_per_process_memory_fraction`), so that the worker
behaves on an 80 GB card as it would on a 16 or 24 GB one. What a forward needs grows with its audio:
SenseVoice's packed encoder and emotion2vec's activations are linear in the batch's seconds, and
emotion2vec's attention is quadratic in one segment's length, which `max_segment_seconds` bounds. So a
batch is cut into chunks of at most `chunk_seconds`, derived from the room left after the weights; a
chunk that still runs out of memory is halved and run again (`Engine.submit`), never failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

GIB = 1024**3
# Measured through the whole stack at bf16 with both models, packed SenseVoice, CUDA graphs and expandable
# segments (BENCHMARKS.md, "End to end"): the GPU worker peaked at 18.7 GiB with 1,200 s batches, about
# 14.5 MiB per second of audio in one forward beyond the weights; with head room:
BYTES_PER_SECOND = 16 * 1024**2
# Kept free for the CUDA-graph pool's fragmentation, cuBLAS workspaces and the warm-up's odd shapes.
RESERVE_BYTES = 1 * GIB
# Left to the driver and other processes when the budget is derived from the card.
CARD_MARGIN_BYTES = 1 * GIB


@dataclass(frozen=True)
class Budget:
    total_bytes: int  # what the worker may use in all
    card_bytes: int  # the card's memory, as the driver reports it

    @property
    def fraction(self) -> float:
        return min(1.0, self.total_bytes / self.card_bytes)

    def chunk_seconds(self, weights_bytes: int, batch_seconds: float, max_segment_seconds: float) -> float:
        """Seconds of audio per forward that fit beside the weights (never less than one longest segment)."""
        room = self.total_bytes - weights_bytes - RESERVE_BYTES
        fits = room / BYTES_PER_SECOND
        return float(max(max_segment_seconds, min(batch_seconds, fits)))


def budget_for(card_bytes: int, setting_gb: float | None) -> Budget:
    """The setting (GiB) when given, else the card less a margin."""
    if setting_gb is None:
        total = card_bytes - CARD_MARGIN_BYTES
    else:
        total = int(setting_gb * GIB)
    if total <= 0:
        raise ValueError(f"SPEECHQ_GPU_MEMORY_GB={setting_gb}: must be more than 0")
    return Budget(total_bytes=min(total, card_bytes), card_bytes=card_bytes)


def apply(device: torch.device, setting_gb: float | None) -> Budget:
    """Cap this process's allocator on `device` to the budget (CUDA only)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    card = torch.cuda.get_device_properties(index).total_memory
    budget = budget_for(card, setting_gb)
    torch.cuda.set_per_process_memory_fraction(budget.fraction, index)
    log.info("GPU memory budget %.1f GiB of the card's %.1f GiB", budget.total_bytes / GIB, card / GIB)
    return budget


def chunks(seconds: np.ndarray, limit: float) -> list[slice]:
    """Consecutive slices of segments whose seconds sum to at most `limit` (a longer segment stands alone)."""
    out, start, total = [], 0, 0.0
    for i, s in enumerate(seconds):
        if i > start and total + s > limit:
            out.append(slice(start, i))
            start, total = i, 0.0
        total += float(s)
    if start < len(seconds):
        out.append(slice(start, len(seconds)))
    return out
