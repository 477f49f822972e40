"""Batched SenseVoiceSmall forward: one padded batch of segments, language and ITN per segment.

Computes the function of funasr's SenseVoiceSmall.inference (its frontend, four query frames,
encoder and CTC head) for a whole batch at once: fbank/LFR/CMVN batched on the device, fused
attention, greedy CTC decode with one device-to-host copy per batch, tags parsed on the host.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from shared.models.tokens import parse_tags
from workers import sanm
from workers.features import BatchFrontend

EVENT_EMO_QUERY = (1, 2)


def compiled(fn):
    """torch.compile with dynamic shapes (batch and length vary from batch to batch)."""
    import torch._inductor.config as inductor

    # torch 2.11's tiling analysis asserts on dynamic shapes in these graphs; it is an optimisation only.
    inductor.triton.coalesce_tiling_analysis = False
    return torch.compile(fn, dynamic=True)


@dataclass
class Transcript:
    text: str
    language: str | None
    emotion: str | None
    event: str | None
    itn: bool | None


_pinned: dict[str, torch.Tensor] = {}


def _staging(numel: int, pinned: bool) -> torch.Tensor:
    """A host buffer reused from batch to batch (pinning memory costs more than copying it)."""
    if not pinned:
        return torch.empty(numel, dtype=torch.float32)
    buf = _pinned.get("audio")
    done = _pinned.get("copied")
    if done is not None:
        done.synchronize()  # the previous upload from this buffer has finished
    if buf is None or buf.numel() < numel:
        buf = torch.empty(max(numel, 1 << 20), dtype=torch.float32, pin_memory=True)
        _pinned["audio"] = buf
    return buf[:numel]


def pad_batch(wavs: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (B, T) float32 on `device`: segments go up packed end to end, padding happens there."""
    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.int64)
    flat = _staging(int(lengths.sum()), device.type == "cuda")
    np.concatenate([np.asarray(w, dtype=np.float32) for w in wavs], out=flat.numpy())
    flat = flat.to(device, non_blocking=True)
    if device.type == "cuda":
        _pinned["copied"] = torch.cuda.Event()
        _pinned["copied"].record()
    lengths = lengths.to(device, non_blocking=True)
    width = int(max(len(w) for w in wavs))
    starts = torch.cumsum(lengths, 0) - lengths
    pos = torch.arange(width, device=device)[None, :]
    valid = pos < lengths[:, None]
    index = (starts[:, None] + pos).clamp_max(flat.numel() - 1)
    return torch.where(valid, flat[index], 0.0), lengths


class SenseVoice:
    def __init__(self, automodel, device: torch.device, dtype: torch.dtype = torch.float32,
                 compile: bool = False):
        model = automodel.model
        if dtype != torch.float32:  # weights cast once, not on every call as autocast would
            model = copy.deepcopy(model).to(dtype)
        self.model = model.to(device).eval()
        self.tokenizer = automodel.kwargs["tokenizer"]
        self.device = device
        self.dtype = dtype
        self.frontend = BatchFrontend(automodel.kwargs["frontend"], device)
        self.shifted = compile
        # CTC head padded to a multiple of 128 classes: GEMM libraries pick far better kernels
        # for 25088 than for 25055 outputs. Extra classes get -inf and never win the argmax.
        head = self.model.ctc.ctc_lo
        self.vocab = head.weight.shape[0]
        padded = -(-self.vocab // 128) * 128
        self.head_weight = torch.zeros(padded, head.weight.shape[1], dtype=dtype, device=device)
        self.head_weight[: self.vocab] = head.weight.detach()
        self.head_bias = torch.full((padded,), float("-inf"), dtype=dtype, device=device)
        self.head_bias[: self.vocab] = head.bias.detach()
        self._forward = compiled(self._ids) if compile else self._ids

    def _query(self, languages: list[str], itn: list[bool]) -> torch.Tensor:
        lid = [self.model.lid_dict.get(lang, 0) for lang in languages]
        norm = [self.model.textnorm_dict["withitn" if flag else "woitn"] for flag in itn]
        ids = torch.tensor([[lang, *EVENT_EMO_QUERY, n] for lang, n in zip(lid, norm)])
        return ids.to(self.device, non_blocking=True)

    def _encode(self, wav, lengths, query):
        feats, n = self.frontend(wav, lengths)
        speech = torch.cat((self.model.embed(query), feats.to(self.dtype)), dim=1)
        lengths = n + query.shape[1]
        out = sanm.encode(self.model.encoder, speech, lengths, self.shifted)
        return torch.nn.functional.linear(out, self.head_weight, self.head_bias), lengths

    def _ids(self, wav, lengths, query):
        logits, lengths = self._encode(wav, lengths, query)
        return logits.argmax(dim=-1), lengths

    @torch.inference_mode()
    def logits(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool]):
        """CTC log-probabilities (B, T, V) in float32 and valid lengths."""
        wav, lengths = pad_batch(wavs, self.device)
        logits, lengths = self._encode(wav, lengths, self._query(languages, itn))
        return torch.log_softmax(logits[..., : self.vocab].float(), dim=-1), lengths

    @torch.inference_mode()
    def token_ids(self, wavs, languages, itn) -> tuple[np.ndarray, np.ndarray]:
        wav, lengths = pad_batch(wavs, self.device)
        best, lengths = self._forward(wav, lengths, self._query(languages, itn))
        return best.cpu().numpy(), lengths.cpu().numpy()  # one copy for the whole batch

    def decode(self, best: np.ndarray, lengths: np.ndarray) -> list[Transcript]:
        out = []
        for row, n in zip(best, lengths):
            seq = row[:n]
            if seq.size:
                seq = seq[np.concatenate(([True], seq[1:] != seq[:-1]))]
            tokens = seq[seq != self.model.blank_id].tolist()
            out.append(Transcript(**parse_tags(self.tokenizer.decode(tokens))))
        return out

    def __call__(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool]) -> list[Transcript]:
        if not wavs:
            return []
        return self.decode(*self.token_ids(wavs, languages, itn))
