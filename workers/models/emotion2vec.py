"""Batched emotion2vec forward with correct masks under padding.

funasr's Emotion2vec.inference runs one utterance at a time. Batching needs three things its
batched path lacks: each waveform normalised over its own samples before padding; padded frames
zeroed between the convolutions of the positional encoder (they read neighbours); and the
utterance embedding averaged over valid frames only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from workers.runtime.compiling import batch_dynamic
from workers.runtime.staging import copied, pad_batch, prepare, to_device


@dataclass
class EmotionScores:
    label: str
    scores: dict[str, float]


def _short(label: str) -> str:
    """The English name of a class ("生气/angry" -> "angry"); the ninth class, "<unk>", is "unknown"."""
    name = label.split("/")[-1]
    return "unknown" if name == "<unk>" else name


def _attention(attn, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """bias: the dense (B, H, N, N) additive mask (ALiBi, and -inf on padded keys)."""
    b, n, c = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


def _positions(enc, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The convolutional relative positions, with padded frames zeroed before every convolution."""
    layers = list(enc.relative_positional_encoder.children())
    if len(layers) == 2:  # conv_pos_pre_ln: LayerNorm, then the conv stack
        x = layers[0](x)
        layers = list(layers[1].children())
    mask = valid[:, None, :].to(x.dtype)
    h = x.transpose(1, 2)
    for block in layers[1:-1]:
        h = block(h * mask)
    return (h * mask).transpose(1, 2)


def _front(enc, source: torch.Tensor, n_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CNN feature extractor, then positions: (B, S) waveform -> (B, T, C) frames and valid (B, T).
    Half of the model's time in eager mode goes here (3,200 frames a second, 512 channels, each
    normalised and activated), so it is one compiled region of its own."""
    x = enc.local_features(source)
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < n_frames[:, None]
    return x + _positions(enc, x, valid), valid


def _block(blk, x: torch.Tensor, bias) -> torch.Tensor:
    """AltBlock.forward (post-norm, as in emotion2vec) with fused attention."""
    if blk.layer_norm_first:
        x = x + _attention(blk.attn, blk.norm1(x), bias)
        return x + blk.mlp(blk.norm2(x))
    x = blk.norm1(x + _attention(blk.attn, x, bias))
    return blk.norm2(x + blk.mlp(x))


def split_by_length(lengths: list[int], ratio: float = 0.8, min_padded: int = 0) -> list[tuple[int, int]]:
    """Cut a batch sorted longest first into runs [start, end) whose rows are at least `ratio` of
    the run's longest, so that padding to the longest wastes little; a run keeps growing while its
    padded size (rows × longest) is under `min_padded`, so that no run is too small to fill the GPU."""
    runs, start = [], 0
    while start < len(lengths):
        longest, end = lengths[start], start + 1
        while end < len(lengths) and (lengths[end] >= ratio * longest or (end - start) * longest < min_padded):
            end += 1
        runs.append((start, end))
        start = end
    return runs


class Emotion2vec:
    """The batched forward. Built eager; the engine (workers.gpu.engine) may replace `block` (one
    transformer block) and `front` (the CNN feature extractor and positions) by compiled copies,
    or `encode` (the whole encoder) by a compiled copy of it."""

    def __init__(self, automodel, device: torch.device, dtype: torch.dtype = torch.float32):
        self.split_ratio, self.split_min = 0.8, 600 * 16000  # see launch(); measured in BENCHMARKS.md
        self.model = prepare(automodel.model, device, dtype)
        tokenizer = automodel.kwargs.get("tokenizer")
        self.labels = list(tokenizer.token_list) if tokenizer is not None else []
        self.keep = [i for i, lab in enumerate(self.labels) if not lab.startswith("unuse")]
        self.kept = torch.tensor(self.keep, dtype=torch.long, device=device)
        if device.type == "cuda" and device.index is None:
            # funasr caches the ALiBi table per device and compares devices: "cuda" != "cuda:0"
            # would rebuild it on the host and copy it up (a stream sync) on every batch
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.dtype = dtype
        self.encoder = self.model.modality_encoders["AUDIO"]
        self.align = 8  # attention length multiple
        # what the engine may replace (eager defaults)
        self.block = _block
        self.front = _front
        self.encode = self._encode

    def _frames(self, lengths: torch.Tensor) -> torch.Tensor:
        for _, kernel, stride in self.encoder.feature_enc_layers:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def _alibi(self, frames: int, extra: int) -> tuple[torch.Tensor, list | None]:
        """ALiBi bias (1, H, N, N) for N = extra + frames, and per-layer scales if the model has them."""
        enc = self.encoder
        alibi = enc.get_alibi_bias(batch_size=1, time_steps=frames, heads=enc.modality_cfg.num_alibi_heads,
                                   dtype=torch.float32, device=self.device)
        scale, scales = enc.alibi_scale, None
        if scale is not None:
            scale = scale.clamp_min(0)
            if scale.size(0) == 1:
                alibi = alibi * scale.squeeze(0).type_as(alibi)
            else:
                scales = [s.type_as(alibi) for s in scale]
        return F.pad(alibi, (extra, 0, extra, 0)), scales

    def _normalised(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        source, lengths = pad_batch(wavs, self.device)
        return self._normalise(source, lengths), lengths

    def _normalise(self, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Each zero-padded waveform layer-normalised over its own samples (as funasr does)."""
        if self.model.cfg.normalize:
            valid = (torch.arange(source.shape[1], device=self.device)[None, :] < lengths[:, None]).float()
            n = lengths[:, None].float()
            mean = (source * valid).sum(1, keepdim=True) / n
            var = (((source - mean) * valid) ** 2).sum(1, keepdim=True) / n
            source = (source - mean) / torch.sqrt(var + 1e-5) * valid
        return source

    @torch.inference_mode()
    def embeddings(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features (B, T, C) without extra tokens, and the valid-frame mask (B, T)."""
        source, lengths = self._normalised(wavs)
        return self.encode(source, lengths)

    def _encode(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        source = source.to(self.dtype)  # weights were cast once at load
        n_frames = self._frames(lengths)
        batch_dynamic(source, n_frames)
        x, valid = self.front(enc, source, n_frames)
        padding = ~valid
        num = enc.extra_tokens.size(1) if enc.extra_tokens is not None else 0
        if num:
            x = torch.cat([enc.extra_tokens.expand(x.size(0), -1, -1), x], dim=1)
            padding = F.pad(padding, (num, 0))
        # Attention kernels want the key length a multiple of 8; otherwise SDPA copies the whole
        # (B, H, N, N) bias on every layer. The added frames are padding, masked like the rest.
        extra = -x.shape[1] % self.align
        if extra:
            x = F.pad(x, (0, 0, 0, extra))
            padding = F.pad(padding, (0, extra), value=True)
            valid = F.pad(valid, (0, extra), value=False)
        ctx = enc.context_encoder
        if ctx.norm is not None and not ctx.layer_norm_first:
            x = ctx.norm(x)
        blocks = list(ctx.blocks) + list(self.model.blocks)
        alibi, scales = self._alibi(x.shape[1] - num, num)
        keys = padding[:, None, None, :]
        dtype = self.dtype
        bias = alibi.to(dtype).masked_fill(keys, float("-inf"))  # (B, H, N, N)
        batch_dynamic(x, bias)
        for i, blk in enumerate(blocks):
            if scales is not None:
                bias = (alibi * scales[i]).to(dtype).masked_fill(keys, float("-inf"))
                batch_dynamic(bias)
            x = self.block(blk, x, bias)
        if self.model.norm is not None:
            x = self.model.norm(x)
        return x[:, num:].float(), valid  # (B, T + alignment, C), with the alignment frames invalid

    @torch.inference_mode()
    def scores(self, wavs: list[np.ndarray]) -> torch.Tensor:
        """Utterance-level class probabilities (B, labels), 'unuse' classes excluded."""
        return self._scores(*self.embeddings(wavs))

    @torch.inference_mode()
    def launch(self, wav: torch.Tensor, lengths: torch.Tensor,
               host_lengths: torch.Tensor | None = None) -> EmotionPending:
        """Queue a padded batch (raw waveforms, as staged for SenseVoice too) on the device and
        start copying the scores back; returns at once. With the lengths on the host too, the rows
        run longest first in runs of similar length (split_by_length), each padded
        only to its own longest: a batch that spans 3 to 30 s no longer pads every row to 30 s."""
        if host_lengths is None or len(host_lengths) < 2:
            probs = self._run(wav, lengths)
        else:
            host = host_lengths.numpy()
            order = np.argsort(-host, kind="stable")
            parts = []
            for start, end in split_by_length(host[order].tolist(), self.split_ratio, self.split_min):
                rows = to_device(order[start:end], self.device)
                width = int(host[order[start]])
                parts.append(self._run(wav.index_select(0, rows)[:, :width].contiguous(), lengths[rows]))
            inverse = to_device(np.argsort(order), self.device)
            probs = torch.cat(parts).index_select(0, inverse)
        return EmotionPending(probs.to("cpu", non_blocking=True), copied(), self)

    def _run(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._scores(*self.encode(self._normalise(wav, lengths), lengths))

    def _scores(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = valid.to(x.dtype)[..., None]
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1.0)
        logits = torch.nn.functional.linear(pooled, self.model.proj.weight.float(), self.model.proj.bias.float())
        # the 'unuse' classes take no share of the probability
        return torch.softmax(logits[:, self.kept], dim=-1)

    def __call__(self, wavs: list[np.ndarray]) -> list[EmotionScores]:
        if not wavs:
            return []
        return self.labelled(self.scores(wavs).cpu().numpy())

    def labelled(self, probs: np.ndarray) -> list[EmotionScores]:
        names = [_short(self.labels[i]) for i in self.keep]
        out = []
        for row in probs:
            out.append(EmotionScores(label=names[int(row.argmax())],
                                     scores={n: round(float(p), 6) for n, p in zip(names, row)}))
        return out


@dataclass
class EmotionPending:
    """Scores on their way to the host; `results()` waits for them."""
    probs: torch.Tensor
    done: torch.cuda.Event | None
    model: Emotion2vec

    def results(self) -> list[EmotionScores]:
        if self.done is not None:
            self.done.synchronize()
        return self.model.labelled(self.probs.numpy())
