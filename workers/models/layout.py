"""Segments laid end to end in one sequence instead of padded to the longest ("varlen" packing).

A length-sorted batch still pads every segment to its longest; with a shallow queue a batch spans
3 to 15 s and a third of the arithmetic is spent on padding. Packed, every per-frame operation
(the GEMMs, LayerNorms, the FSMN memory) runs on real frames only. `gap` unused frames before each
segment keep a convolution over time from reaching across segments (its inputs are masked there).
Attention either goes back to a padded (B, T) layout, which costs two gathers per layer, or, with
`varlen`, runs on the packed sequence itself (FlashAttention's variable-length kernel): every
segment, every gap and the tail padding is then an attention sequence of its own, so that no frame
attends across a boundary and every frame's output stays finite.

With `bucketed`, the packed length, the number of attention sequences and the longest sequence are
rounded up (workers.runtime.graphs.bucket) so that a CUDA graph captured for one batch replays for the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workers.runtime.graphs import bucket
from workers.runtime.staging import to_device


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
    seqs: torch.Tensor | None = None  # varlen: (S + 1,) int32 bounds of the attention sequences
    longest: int = 0  # varlen: no attention sequence is longer

    @classmethod
    def build(cls, lengths: np.ndarray, width: int, gap: int, device: torch.device,
              varlen: bool = False, bucketed: bool = False) -> Layout:
        """lengths: valid frames of each padded row; width: the padded length T."""
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.cumsum(lengths + gap) - lengths
        total = int(starts[-1] + lengths[-1]) if len(lengths) else 0
        if bucketed:
            total = bucket(total)
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
        put = lambda a: to_device(a, device)  # noqa: E731
        layout = cls(lengths, starts, total, width, put(to_rows), put(to_packed), put(valid), put(positions))
        if varlen:
            seqs, layout.longest = _sequences(starts, lengths, total, gap, bucketed)
            layout.seqs = put(seqs)
        return layout

    @property
    def key(self) -> tuple[int, int, int]:
        """The shapes a captured graph depends on."""
        return self.total, 0 if self.seqs is None else len(self.seqs), self.longest

    def attention(self) -> dict:
        """The arguments that workers.sanm.layer needs to attend within segments."""
        if self.seqs is not None:
            return {"seqs": self.seqs, "longest": self.longest}
        return {"to_rows": self.to_rows, "to_packed": self.to_packed}

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (N, D)."""
        return padded.reshape(-1, padded.shape[-1])[self.to_packed]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D); padding slots hold whatever frame they point at."""
        return packed[self.to_rows].reshape(len(self.lengths), self.width, packed.shape[-1])

    def rows(self, values: np.ndarray) -> list[np.ndarray]:
        """Host-side (N, ...) values split back into one array per segment."""
        return [values[s:s + n] for s, n in zip(self.starts, self.lengths)]


# Bucketed shapes, so that one CUDA graph serves most full batches: the longest sequence is at least
# LONGEST frames (a 30 s segment is 504 with its query frames) and there are at least one sequence
# for every FRAMES_PER_SEQUENCE frames (a 4 s segment and its gap). Spare sequences are empty: the
# attention kernel's blocks for them return at once.
LONGEST = 512
FRAMES_PER_SEQUENCE = 40


def _sequences(starts: np.ndarray, lengths: np.ndarray, total: int, gap: int,
               bucketed: bool) -> tuple[np.ndarray, int]:
    """Bounds of the attention sequences that tile [0, total): each gap, each segment, and the tail
    in pieces no longer than the longest segment; bucketed, the longest is rounded up to a power of
    two (at least LONGEST) and the bounds are padded with empty sequences to a power-of-two count
    (at least total / FRAMES_PER_SEQUENCE)."""
    longest = max(int(lengths.max()) if len(lengths) else 1, gap, 1)
    if bucketed:
        longest = max(1 << (longest - 1).bit_length(), LONGEST)
    ends = starts + lengths
    edges = [starts - gap, starts, ends] if gap else [starts, ends]
    bounds = np.stack(edges, axis=1).reshape(-1)
    last = int(ends[-1]) if len(ends) else 0
    tail = np.arange(last + longest, total, longest)
    bounds = np.unique(np.concatenate([[0], bounds, tail, [total]]))
    if bucketed:
        count = 1 << (max(len(bounds) - 1, total // FRAMES_PER_SEQUENCE) - 1).bit_length()  # a power of two
        bounds = np.concatenate([bounds, np.full(count + 1 - len(bounds), total)])
    return bounds.astype(np.int32), longest
