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


@dataclass
class EmotionScores:
    label: str
    scores: dict[str, float]


def _short(label: str) -> str:
    return label.split("/")[-1]


class Emotion2vec:
    def __init__(self, automodel, device: torch.device, dtype: torch.dtype = torch.float32):
        self.model = automodel.model.to(device).eval()
        tokenizer = automodel.kwargs.get("tokenizer")
        self.labels = list(tokenizer.token_list) if tokenizer is not None else []
        self.keep = [i for i, lab in enumerate(self.labels) if not lab.startswith("unuse")]
        self.device = device
        self.dtype = dtype
        self.encoder = self.model.modality_encoders["AUDIO"]

    def _frames(self, lengths: torch.Tensor) -> torch.Tensor:
        for _, kernel, stride in self.encoder.feature_enc_layers:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def _positions(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        layers = list(self.encoder.relative_positional_encoder.children())
        if len(layers) == 2:  # conv_pos_pre_ln: LayerNorm, then the conv stack
            x = layers[0](x)
            layers = list(layers[1].children())
        mask = valid[:, None, :].to(x.dtype)
        h = x.transpose(1, 2)
        for block in layers[1:-1]:
            h = block(h * mask)
        return (h * mask).transpose(1, 2)

    @torch.inference_mode()
    def embeddings(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features (B, T, C) without extra tokens, and the valid-frame mask (B, T)."""
        cfg = self.model.cfg
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.int64)
        source = torch.zeros(len(wavs), int(lengths.max()), dtype=torch.float32, device=self.device)
        for i, w in enumerate(wavs):
            t = torch.from_numpy(np.asarray(w, dtype=np.float32)).to(self.device, non_blocking=True)
            source[i, : len(w)] = F.layer_norm(t, t.shape) if cfg.normalize else t
        enc = self.encoder
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            x = enc.local_features(source)
            n_frames = self._frames(lengths.to(self.device))
            valid = torch.arange(x.shape[1], device=self.device)[None, :] < n_frames[:, None]
            x = x + self._positions(x, valid)
            padding = ~valid
            alibi = enc.get_alibi_bias(batch_size=x.shape[0], time_steps=x.shape[1],
                                       heads=enc.modality_cfg.num_alibi_heads, dtype=torch.float32,
                                       device=self.device)
            scale = enc.alibi_scale
            if scale is not None:
                scale = scale.clamp_min(0)
                if scale.size(0) == 1:
                    alibi = alibi * scale.squeeze(0).type_as(alibi)
                    scale = None
            num = enc.extra_tokens.size(1) if enc.extra_tokens is not None else 0
            if num:
                x = torch.cat([enc.extra_tokens.expand(x.size(0), -1, -1), x], dim=1)
                padding = F.pad(padding, (num, 0))
                alibi = F.pad(alibi, (num, 0, num, 0))
            prenet = enc.modality_cfg.prenet_depth
            x = enc.context_encoder(x, padding, alibi, scale[:prenet] if scale is not None else None)
            rest = scale[prenet:] if scale is not None and scale.size(0) > 1 else scale
            for i, blk in enumerate(self.model.blocks):
                ab = alibi
                if rest is not None:
                    s = rest[i] if rest.size(0) > 1 else rest.squeeze(0)
                    ab = ab * s.type_as(ab)
                x, _ = blk(x, padding_mask=padding, alibi_bias=ab)
            if self.model.norm is not None:
                x = self.model.norm(x)
        return x[:, num:].float(), valid

    @torch.inference_mode()
    def scores(self, wavs: list[np.ndarray]) -> torch.Tensor:
        """Utterance-level class probabilities (B, labels), 'unuse' classes excluded."""
        x, valid = self.embeddings(wavs)
        w = valid.to(x.dtype)[..., None]
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1.0)
        logits = self.model.proj(pooled).float()
        unused = [i for i in range(logits.shape[1]) if i not in self.keep]
        if unused:
            logits[:, unused] = -float("inf")
        return torch.softmax(logits, dim=-1)[:, self.keep]

    def __call__(self, wavs: list[np.ndarray]) -> list[EmotionScores]:
        if not wavs:
            return []
        probs = self.scores(wavs).cpu().numpy()
        names = [_short(self.labels[i]) for i in self.keep]
        out = []
        for row in probs:
            out.append(EmotionScores(label=names[int(row.argmax())],
                                     scores={n: round(float(p), 6) for n, p in zip(names, row)}))
        return out
