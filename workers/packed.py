"""Segments laid end to end in one sequence instead of padded to the longest ("varlen" packing).

A length-sorted batch still pads every segment to its longest; with a shallow queue a batch spans
3 to 15 s and a third of the arithmetic is spent on padding. Packed, every per-frame operation
(the GEMMs, LayerNorms, the FSMN memory) runs on real frames only. `gap` unused frames before each
segment keep a convolution over time from reaching across segments (its inputs are masked there),
and attention goes back to a padded (B, T) layout, which costs two gathers per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Layout:
    lengths: np.ndarray  # (B,) frames per segment, on the host
    starts: np.ndarray  # (B,) where each segment starts in the packed sequence
    total: int  # N, the packed length, gaps included
    width: int  # T, the padded length
    to_rows: torch.Tensor  # (B * T,) for each padded slot, the packed frame it reads (padding: any)
    to_packed: torch.Tensor  # (N,) for each packed frame, the padded slot it reads (gaps: any)
    valid: torch.Tensor  # (N,) True on segment frames, False in gaps
    positions: torch.Tensor  # (N,) 1-based position of each frame within its segment (0 in gaps)

    @classmethod
    def build(cls, lengths: np.ndarray, width: int, gap: int, device: torch.device) -> Layout:
        """lengths: valid frames of each padded row; width: the padded length T."""
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.cumsum(lengths + gap) - lengths
        total = int(starts[-1] + lengths[-1]) if len(lengths) else 0
        rows = np.repeat(np.arange(len(lengths)), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(np.r_[0, lengths[:-1]]), lengths)
        packed_at = np.repeat(starts, lengths) + within
        to_packed = np.zeros(total, dtype=np.int64)
        to_packed[packed_at] = rows * width + within
        to_rows = np.zeros(len(lengths) * width, dtype=np.int64)
        to_rows[rows * width + within] = packed_at
        valid = np.zeros(total, dtype=bool)
        valid[packed_at] = True
        positions = np.zeros(total, dtype=np.int64)
        positions[packed_at] = within + 1
        put = lambda a: torch.from_numpy(a).to(device, non_blocking=True)  # noqa: E731
        return cls(lengths, starts, total, width, put(to_rows), put(to_packed), put(valid), put(positions))

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (N, D)."""
        return padded.reshape(-1, padded.shape[-1])[self.to_packed]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D); padding slots hold whatever frame they point at."""
        return packed[self.to_rows].reshape(len(self.lengths), self.width, packed.shape[-1])

    def rows(self, values: np.ndarray) -> list[np.ndarray]:
        """Host-side (N, ...) values split back into one array per segment."""
        return [values[s:s + n] for s, n in zip(self.starts, self.lengths)]
