"""FSMN-VAD's frontend and network for many streams at once, block by block, on the CPU.

Each stream (a channel of a call) carries its own small state between blocks: the samples short
of a whole 25 ms frame, the last fbank frames (LFR needs two on each side) and the last 19 inputs
of each FSMN memory layer. The network runs once per step on all streams' new frames stacked into
one (streams, frames, 400) batch. The result per frame is the silence posterior, as funasr's
`FsmnVADStreaming` reads it (softmax output 0), for the same frames its online frontend emits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from shared.fbank import LogMel


@dataclass
class StreamState:
    rest: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    context: torch.Tensor | None = None     # fbank frames kept for LFR: 2 left of the next centre, then pending
    memory: list[torch.Tensor] | None = None  # per FSMN layer: its last (lorder - 1) projected inputs
    samples: int = 0


class Scorer:
    """Built from funasr's loaded FsmnVADStreaming model and its WavFrontendOnline frontend."""

    def __init__(self, model, frontend, dtype: torch.dtype = torch.float32):
        enc = model.encoder
        if frontend.lfr_n != 1 or frontend.lfr_m % 2 != 1 or enc.fsmn[0].rorder:
            raise ValueError("unsupported FSMN-VAD frontend/encoder layout")
        self.dtype = dtype
        self.logmel = LogMel(frontend.n_mels, frontend.fs, frontend.frame_length, frontend.frame_shift)
        self.scale = float(1 << 15) if getattr(frontend, "upsacle_samples", True) else 1.0
        self.side = (frontend.lfr_m - 1) // 2
        self.cmvn = frontend.cmvn.float().clone() if frontend.cmvn is not None else None

        def lin(m):
            return m.linear.weight.detach().to(dtype), (m.linear.bias.detach().to(dtype)
                                                        if m.linear.bias is not None else None)

        self.head = [lin(enc.in_linear1), lin(enc.in_linear2)]
        self.layers = [(lin(blk.linear), blk.fsmn_block.conv_left.weight.detach()[:, :, :, 0].to(dtype),
                        lin(blk.affine)) for blk in enc.fsmn]
        self.lorder = enc.fsmn[0].fsmn_block.lorder
        # out_linear2(out_linear1(x)) has no nonlinearity between: one 250 -> 248 product instead of two
        (w3, b3), (w4, b4) = lin(enc.out_linear1), lin(enc.out_linear2)
        self.tail = ((w4.double() @ w3.double()).to(dtype), (w4.double() @ b3.double() + b4.double()).to(dtype))

    # -- frontend ----------------------------------------------------------------------------
    def features(self, state: StreamState, block: np.ndarray, final: bool) -> torch.Tensor:
        """New LFR+CMVN frames (n, 400) that this block completes; all remaining ones if final."""
        x = np.concatenate((state.rest, block)) if state.rest.size else block
        n = self.logmel.count(x.size)
        state.samples += block.size
        fb = None
        if n:
            with torch.inference_mode():
                fb = self.logmel(torch.from_numpy(np.ascontiguousarray(x[: (n - 1) * self.logmel.shift + self.logmel.win]))
                                 * self.scale)
            state.rest = x[n * self.logmel.shift:].copy()
        else:
            state.rest = x.copy()
        k = self.side
        if state.context is None:
            if fb is None:
                return torch.zeros(0, self.cmvn.shape[1] if self.cmvn is not None else 0)
            state.context = fb[:1].expand(k, -1)  # funasr pads the start with the first frame
        frames = torch.cat((state.context, fb)) if fb is not None else state.context
        if final:
            frames = torch.cat((frames, frames[-1:].expand(k, -1)))
        centres = frames.shape[0] - 2 * k
        if centres <= 0:
            state.context = frames
            return torch.zeros(0, frames.shape[1] * (2 * k + 1))
        lfr = frames.unfold(0, 2 * k + 1, 1).transpose(1, 2).reshape(centres, -1)
        state.context = frames[centres:]
        if self.cmvn is not None:
            lfr = (lfr + self.cmvn[0]) * self.cmvn[1]
        return lfr

    # -- network -----------------------------------------------------------------------------
    @torch.inference_mode()
    def silence(self, states: list[StreamState], feats: list[torch.Tensor]) -> list[np.ndarray]:
        """Silence posterior per new frame of each stream; the streams' FSMN memories advance."""
        lengths = [f.shape[0] for f in feats]
        width = max(lengths, default=0)
        if width == 0:
            return [np.zeros(0, dtype=np.float32) for _ in feats]
        x = torch.stack([F.pad(f, (0, 0, 0, width - f.shape[0])) for f in feats]).to(self.dtype)
        (w1, b1), (w2, b2) = self.head
        x = torch.relu(F.linear(F.linear(x, w1, b1), w2, b2))
        pad = self.lorder - 1
        for s in states:
            if s.memory is None:  # funasr starts each layer's memory at zeros
                s.memory = [torch.zeros(pad, taps.shape[0], dtype=self.dtype) for _, taps, _ in self.layers]
        for i, ((wp, _), taps, (wa, ba)) in enumerate(self.layers):
            p = F.linear(x, wp)                       # (B, T, proj)
            y = torch.cat((torch.stack([s.memory[i] for s in states]), p), dim=1)  # (B, pad + T, proj)
            conv = F.conv1d(y.transpose(1, 2), taps, groups=taps.shape[0]).transpose(1, 2)
            for s, n, row in zip(states, lengths, y):
                s.memory[i] = row[n:n + pad].clone()  # a stream with no new frames keeps its memory
            x = torch.relu(F.linear(p + conv, wa, ba))
        logits = F.linear(x, *self.tail).float()
        prob = torch.softmax(logits, dim=-1)[..., 0]
        return [prob[i, :n].numpy() for i, n in enumerate(lengths)]
