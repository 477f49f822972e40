"""FSMN-VAD's frontend and network for many streams at once, block by block, on the CPU.

Each stream (a channel of a call) carries its own small state between blocks: the samples short
of a whole 25 ms frame, the last fbank frames (LFR needs two on each side) and the last 19 inputs
of each FSMN memory layer. The network runs once per step on all streams' new frames stacked into
one (streams, frames, 400) batch. The result per frame is the silence posterior, as funasr's
`FsmnVADStreaming` reads it (softmax output 0), for the same frames its online frontend emits.

Checked mixed precision: the network runs in bf16 (about twice as fast on AVX-512 BF16 / AMX
cores), and every frame whose bf16 posterior lies within `margin` of the speech/silence threshold
is computed again in fp32. The FSMN looks back a fixed number of frames and never ahead, so a
frame's fp32 output needs only that many earlier input frames, not the whole stream: each stream
keeps its last `reach` fp32 input frames between steps. Deeper layers need fewer of them, so the
recheck computes each layer only at the frames that a flagged frame still depends on. Decisions
therefore equal fp32's, as long as bf16's error on the posterior stays below the margin (tests
measure it; it is a few hundredths of the margin).

On a GPU host the bf16 pass may run on the GPU (`device`), with the fp32 recheck still on the CPU:
the same argument gives the same decisions, and the CPU keeps only the frontend and the recheck.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from workers.models.fbank import LogMel


@dataclass
class StreamState:
    rest: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    context: torch.Tensor | None = None     # fbank frames kept for LFR: 2 left of the next centre, then pending
    memory: list[torch.Tensor] | None = None  # per FSMN layer: its last (lorder - 1) projected inputs
    samples: int = 0
    recent: torch.Tensor | None = None      # the last `reach` fp32 input frames (checked mixed precision)


class Scorer:
    """Built from funasr's loaded FsmnVADStreaming model and its WavFrontendOnline frontend.

    dtype is the network's precision; with `pivot` (the posterior at which a frame's decision
    flips) and a bf16 dtype, frames within `margin` of the pivot are recomputed in fp32."""

    def __init__(self, model, frontend, dtype: torch.dtype = torch.float32, pivot: float | None = None,
                 margin: float = 0.05, device: str = "cpu"):
        enc = model.encoder
        if frontend.lfr_n != 1 or frontend.lfr_m % 2 != 1 or enc.fsmn[0].rorder:
            raise ValueError("unsupported FSMN-VAD frontend/encoder layout")
        if any(blk.fsmn_block.lstride != 1 for blk in enc.fsmn):
            raise ValueError("unsupported FSMN-VAD memory stride")
        self.dtype = dtype
        self.logmel = LogMel(frontend.n_mels, frontend.fs, frontend.frame_length, frontend.frame_shift)
        self.scale = float(1 << 15) if getattr(frontend, "upsacle_samples", True) else 1.0
        self.side = (frontend.lfr_m - 1) // 2
        self.cmvn = frontend.cmvn.float().clone() if frontend.cmvn is not None else None
        # FSMN-VAD's am.mvn gives each of the LFR vector's lfr_m frames the same statistics: then each fbank frame
        # is normalised once, before stacking (lfr_m times fewer sums, the same bits), and the stacked frames are a
        # view of them, not a fresh (frames, 400) tensor
        self.frame_cmvn = None
        if self.cmvn is not None and self.cmvn.shape[1] % frontend.lfr_m == 0:
            blocks = self.cmvn.view(2, frontend.lfr_m, -1)
            if torch.equal(blocks, blocks[:, :1].expand_as(blocks)):
                self.frame_cmvn = blocks[:, 0].contiguous()
        self.lorder = enc.fsmn[0].fsmn_block.lorder
        self.reach = len(enc.fsmn) * (self.lorder - 1)  # earlier input frames an output depends on
        self.exact = _Weights(enc, torch.float32)
        on_cpu = torch.device(device).type == "cpu"
        if not on_cpu and (dtype == torch.float32 or pivot is None):
            raise ValueError("the FSMN runs on a GPU only as the checked bf16 pass (its fp32 sums differ from MKL's)")
        self.fast = self.exact if dtype == torch.float32 and on_cpu else _Weights(enc, dtype, device)
        self.pivot = pivot if dtype != torch.float32 else None
        self.margin = margin
        self._batch = torch.empty(0, dtype=self.fast.dtype)  # the padded features of a step, reused
        self.rechecked = 0   # frames recomputed in fp32 (for benchmarks and logs)
        self.frames = 0

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
                if self.frame_cmvn is not None:
                    fb = fb.add_(self.frame_cmvn[0]).mul_(self.frame_cmvn[1])
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
        lfr = frames.unfold(0, 2 * k + 1, 1).transpose(1, 2).reshape(centres, -1)  # a view: rows overlap
        state.context = frames[centres:]
        if self.cmvn is not None and self.frame_cmvn is None:
            lfr = torch.add(lfr, self.cmvn[0]).mul_(self.cmvn[1])
        return lfr

    # -- network -----------------------------------------------------------------------------
    @torch.inference_mode()
    def silence(self, states: list[StreamState], feats: list[torch.Tensor]) -> list[np.ndarray]:
        """Silence posterior per new frame of each stream; the streams' FSMN memories advance."""
        lengths = [f.shape[0] for f in feats]
        width = max(lengths, default=0)
        if width == 0:
            return [np.zeros(0, dtype=np.float32) for _ in feats]
        # one copy of the features, zero-padded, already in the fast pass's dtype (a bf16 batch is half the bytes),
        # into memory kept from step to step: a fresh 10-40 MB tensor each step cost more in page faults than the copy
        shape = (len(feats), width, max(f.shape[1] for f in feats))
        size = shape[0] * shape[1] * shape[2]
        if self._batch.numel() < size:
            self._batch = torch.empty(size, dtype=self.fast.dtype)
        x = self._batch[:size].view(shape)
        for row, f in zip(x, feats):
            row[: f.shape[0]] = f
            row[f.shape[0]:] = 0
        for s in states:
            if s.memory is None:  # funasr starts each layer's memory at zeros
                s.memory = self.fast.zero_memory(self.lorder - 1)
        prob = self.fast.forward(x, [s.memory for s in states], lengths)
        if prob.is_cuda:  # wait asleep, not spinning: the host's other ingest processes need its cores meanwhile
            done = torch.cuda.Event(blocking=True)
            done.record()
            done.synchronize()
        prob = prob.cpu()
        self.frames += sum(lengths)
        if self.pivot is not None:
            self._recheck(states, feats, prob)
        return [prob[i, :n].numpy() for i, n in enumerate(lengths)]

    def _recheck(self, states: list[StreamState], feats: list[torch.Tensor], prob: torch.Tensor) -> None:
        """Recompute in fp32, in place, the posteriors within `margin` of the pivot."""
        near = (prob - self.pivot).abs() < self.margin
        rows, picks = [], []
        for i, (s, f) in enumerate(zip(states, feats)):
            past = s.recent if s.recent is not None else f[:0]
            s.recent = torch.cat((past, f[-self.reach:]))[-self.reach:]  # a copy of at most 2 x reach frames
            idx = torch.nonzero(near[i, :f.shape[0]]).flatten()
            if idx.numel() == 0:
                continue
            # The stream's kept past and this block, read as one sequence (not copied together: only the frames
            # the recheck keeps are). It starts at the stream's start or `reach` frames before the block, so
            # every frame a flagged frame depends on is in it.
            rows.append((Joined(past, f), idx + past.shape[0]))
            picks.append((i, idx))
        if not rows:
            return
        for (i, idx), exact in zip(picks, self.exact.at(rows)):
            prob[i, idx] = exact
            self.rechecked += idx.numel()


class Joined:
    """Runs of (frames, features) read as one sequence without copying them together: indexing it with a
    mask over all its frames copies only the frames picked."""

    def __init__(self, *parts: torch.Tensor):
        self.parts = parts
        self.shape = (sum(p.shape[0] for p in parts), *parts[-1].shape[1:])

    def __getitem__(self, mask: torch.Tensor) -> torch.Tensor:
        edges = [0]
        for part in self.parts:
            edges.append(edges[-1] + part.shape[0])
        return torch.cat([part[mask[a:b]] for part, a, b in zip(self.parts, edges, edges[1:])])


# MKL multiplies a product of fewer than 12 rows (but 4 and 8) with other kernels, whose sums
# differ from the full pass's in the last bit: the pruned layers pad their few frames to this.
_MIN_ROWS = 16
# Rows (frames x streams) of one span of the CPU forward: 2,048 x 250 activations are 1 MB in bf16, 2 MB in fp32.
TILE_ROWS = 2048


class _Weights:
    """FSMN-VAD's encoder weights in one dtype, and its forward over padded streams."""

    def __init__(self, enc, dtype: torch.dtype, device: str = "cpu"):
        def lin(m):
            return m.linear.weight.detach().to(device, dtype), (m.linear.bias.detach().to(device, dtype)
                                                                if m.linear.bias is not None else None)

        self.dtype = dtype
        self.device = torch.device(device)
        # fp32 products stay with torch (MKL), as in funasr: numpy's OpenBLAS is twice as fast on AMD
        # cores but sums in another order, and that moved one boundary in 127 (a frame within
        # rounding of the threshold), so the segments would no longer equal funasr's.
        self.head = [lin(enc.in_linear1), lin(enc.in_linear2)]
        self.layers = [(lin(blk.linear), blk.fsmn_block.conv_left.weight.detach()[:, :, :, 0].to(device, dtype),
                        lin(blk.affine)) for blk in enc.fsmn]
        # out_linear2(out_linear1(x)) has no nonlinearity between: one 250 -> 248 product instead of two
        (w3, b3), (w4, b4) = lin(enc.out_linear1), lin(enc.out_linear2)
        w3, b3, w4, b4 = (t.cpu().double() for t in (w3, b3, w4, b4))
        self.tail = ((w4 @ w3).to(device, dtype), (w4 @ b3 + b4).to(device, dtype))

    def zero_memory(self, pad: int) -> list[torch.Tensor]:
        return [torch.zeros(pad, taps.shape[0], dtype=self.dtype, device=self.device) for _, taps, _ in self.layers]

    def forward(self, x: torch.Tensor, memories: list[list[torch.Tensor]], lengths: list[int]) -> torch.Tensor:
        """(B, T) silence posteriors (fp32) of (B, T, 400) inputs; each memory list advances in place
        past its row's first `lengths[b]` frames (a row with no new frames keeps its memory).

        On the CPU the frames go through in spans of about TILE_ROWS / B frames, all layers per span, each
        span's memories carried into the next as between blocks: a span's activations stay in the core's
        cache, where a whole block's (B x 6,000 frames x 250 per layer) streamed through memory. The last
        span takes the remainder, so that no product has fewer rows than the others."""
        width = x.shape[1]
        span = max(_MIN_ROWS, TILE_ROWS // max(1, x.shape[0]))
        if self.device.type != "cpu" or width < 2 * span:
            return self._forward(x, memories, lengths)
        edges = list(range(0, width - span + 1, span)) + [width]
        # each span contiguous: a strided view would go through another product kernel, with other last bits
        return torch.cat([self._forward(x[:, a:b].contiguous(), memories, [min(max(n - a, 0), b - a) for n in lengths])
                          for a, b in zip(edges[:-1], edges[1:])], dim=1)

    def _forward(self, x: torch.Tensor, memories: list[list[torch.Tensor]], lengths: list[int]) -> torch.Tensor:
        x = x.to(self.device, self.dtype)  # on a GPU: one transfer of the block's features per step
        (w1, b1), (w2, b2) = self.head
        # Every product and sum as before; results are updated in place where nothing else reads them
        # (ReLU, the memory-block sum): fewer passes over memory and fewer fresh pages, same bits.
        x = torch.relu_(F.linear(F.linear(x, w1, b1), w2, b2))
        for i, ((wp, _), taps, (wa, ba)) in enumerate(self.layers):
            p = F.linear(x, wp)                       # (B, T, proj)
            pad = taps.shape[-1] - 1
            y = torch.cat((torch.stack([m[i] for m in memories]), p), dim=1)  # (B, pad + T, proj)
            conv = _memory_block(y, taps)
            for m, n, row in zip(memories, lengths, y):
                m[i] = row[n:n + pad].clone()
            x = torch.relu_(F.linear(p.add_(conv), wa, ba))
        logits = F.linear(x, *self.tail).float()
        if self.dtype == torch.float32:
            return torch.softmax(logits, dim=-1)[..., 0]
        # the low-precision pass: output 0 of the softmax as 1 / sum exp(l - l0), within 1e-7 of it and three times
        # as fast (frames near the threshold are recomputed in fp32 anyway)
        return torch.exp(logits - logits[..., :1]).sum(-1).reciprocal()

    def at(self, rows: list[tuple[torch.Tensor | Joined, torch.Tensor]]) -> list[torch.Tensor]:
        """Silence posteriors at the frames `pos` of each (T, 400) input sequence `seq` (a tensor or `Joined`;
        see `_at`), a few sequences at a time: as many as keep about TILE_ROWS frames in the first layer, so
        that the activations stay in the core's cache (at least one sequence)."""
        keep = self._keep(rows)
        need = [int(k[0].sum()) for k in keep]
        out: list[torch.Tensor] = []
        start = 0
        while start < len(rows):
            end, widest = start + 1, need[start]
            while end < len(rows) and (end + 1 - start) * max(widest, need[end]) <= TILE_ROWS:
                widest = max(widest, need[end])
                end += 1
            out.extend(self._at(rows[start:end], keep[start:end]))
            start = end
        return out

    def _keep(self, rows: list[tuple[torch.Tensor | Joined, torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Per sequence and layer (and the tail), the mask of the frames that its picked frames depend on."""
        pad = self.layers[0][1].shape[-1] - 1
        depth = len(self.layers)
        return [[_within(seq.shape[0], pos, (depth - level) * pad) for level in range(depth + 1)] for seq, pos in rows]

    def _at(self, rows: list[tuple[torch.Tensor | Joined, torch.Tensor]],
            keep: list[list[torch.Tensor]] | None = None) -> list[torch.Tensor]:
        """Silence posteriors at the frames `pos` of each (T, 400) input sequence `seq`, each layer
        computed only where those frames still depend on it. A layer's memory looks back
        `lorder - 1` of its inputs and never ahead, so the output at a frame needs layer k's input
        at most (layers - k) x (lorder - 1) frames earlier: the head runs on the whole reach, the
        last layer on the flagged frames and their memory, the tail on the flagged frames alone.
        A sequence must start at its stream's start (memory zero, as in funasr) or a whole reach
        before its first pos. Each layer's frames are packed back to back per row; a frame's
        lookback is a run of consecutive kept frames, so the packed memory convolution reads the
        same inputs as the stream's own. `keep`: the sequences' `_keep` masks, where the caller has them."""
        pad = self.layers[0][1].shape[-1] - 1
        keep = self._keep(rows) if keep is None else keep
        x = _packed([seq[k[0]] for (seq, _), k in zip(rows, keep)], rows_at_least=_MIN_ROWS)
        (w1, b1), (w2, b2) = self.head
        x = torch.relu_(F.linear(F.linear(x.to(self.dtype), w1, b1), w2, b2))
        for level, ((wp, _), taps, (wa, ba)) in enumerate(self.layers):
            p = F.linear(x, wp)
            conv = _memory_block(F.pad(p, (0, 0, pad, 0)), taps)
            # where this layer's needed outputs sit among its packed inputs
            index = _packed([(torch.cumsum(k[level], 0) - 1)[k[level + 1]] for k in keep], rows_at_least=_MIN_ROWS)
            h = p.add_(conv).gather(1, index.unsqueeze(-1).expand(-1, -1, p.shape[-1]))
            x = torch.relu_(F.linear(h, wa, ba))
        prob = torch.softmax(F.linear(x, *self.tail).float(), dim=-1)[..., 0]
        return [prob[b, :pos.numel()] for b, (_, pos) in enumerate(rows)]


def _memory_block(y: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """The FSMN memory: each channel of y (B, pad + T, C) convolved with its own taps (C, 1, pad + 1),
    as a contiguous (B, T, C). Seen as (B, C, 1, pad + T), y's own layout is channels-last, which
    oneDNN convolves in place and returns channels-last too: the same sums as a conv1d over
    y.transpose(1, 2), without the two transposed copies and the strided add that followed (the
    bf16 forward ran 4-5x faster per layer here)."""
    conv = F.conv2d(y.transpose(1, 2).unsqueeze(2), taps.unsqueeze(2), groups=taps.shape[0])
    return conv.squeeze(2).transpose(1, 2)


def _within(length: int, pos: torch.Tensor, back: int) -> torch.Tensor:
    """Mask over `length` frames: those at most `back` frames before some frame of `pos`, or in it."""
    edge = torch.zeros(length + 1, dtype=torch.int32)
    edge.index_add_(0, (pos - back).clamp(min=0), torch.ones_like(pos, dtype=torch.int32))
    edge.index_add_(0, pos + 1, -torch.ones_like(pos, dtype=torch.int32))
    return torch.cumsum(edge[:-1], 0) > 0


def _packed(rows: list[torch.Tensor], rows_at_least: int = 0) -> torch.Tensor:
    """Rows of different lengths as one zero-padded batch (B, T, ...): T is the longest row's
    length, or more where B x T would be under `rows_at_least`."""
    batch = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    short = -(-rows_at_least // len(rows)) - batch.shape[1]
    return F.pad(batch, (0, 0) * (batch.dim() - 2) + (0, short)) if short > 0 else batch
