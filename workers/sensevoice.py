"""Batched SenseVoiceSmall forward: one padded batch of segments, language and ITN per segment.

Computes the function of funasr's SenseVoiceSmall.inference (its frontend, four query frames,
encoder and CTC head) for a whole batch at once: fbank/LFR/CMVN batched on the device, fused
attention, greedy CTC decode with one device-to-host copy per batch, tags parsed on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shared.models.tokens import parse_tags
from workers import sanm
from workers.compiling import bucket_width, compiled, scope
from workers.features import BatchFrontend
from workers.staging import pad_batch, prepare

EVENT_EMO_QUERY = (1, 2)


@dataclass
class Transcript:
    text: str
    language: str | None
    emotion: str | None
    event: str | None
    itn: bool | None


class SenseVoice:
    def __init__(self, automodel, device: torch.device, dtype: torch.dtype = torch.float32,
                 compile: bool | str = False, dynamic: bool | None = True, bucket_seconds: float = 0.0):
        """compile: "off", "model" (the whole forward) or "layers" (each SAN-M layer, regional);
        see workers.compiling. True means "model". bucket_seconds: pad each batch's length up to a
        multiple of it (static-shape compiles then see few lengths)."""
        self.bucket = int(bucket_seconds * 16000)
        self.model = prepare(automodel.model, device, dtype)
        self.tokenizer = automodel.kwargs["tokenizer"]
        self.device = device
        self.dtype = dtype
        self.frontend = BatchFrontend(automodel.kwargs["frontend"], device)
        mode = scope(compile)
        self.shifted = mode != "off"
        self.layer = compiled(sanm.layer, dynamic) if mode == "layers" else sanm.layer
        # CTC head padded to a multiple of 128 classes: GEMM libraries pick far better kernels
        # for 25088 than for 25055 outputs. Extra classes get -inf and never win the argmax.
        head = self.model.ctc.ctc_lo
        self.vocab = head.weight.shape[0]
        padded = -(-self.vocab // 128) * 128
        self.head_weight = torch.zeros(padded, head.weight.shape[1], dtype=dtype, device=device)
        self.head_weight[: self.vocab] = head.weight.detach()
        self.head_bias = torch.full((padded,), float("-inf"), dtype=dtype, device=device)
        self.head_bias[: self.vocab] = head.bias.detach()
        self._forward = compiled(self._ids, dynamic) if mode == "model" else self._ids

    def _query(self, languages: list[str], itn: list[bool]) -> torch.Tensor:
        lid = [self.model.lid_dict.get(lang, 0) for lang in languages]
        norm = [self.model.textnorm_dict["withitn" if flag else "woitn"] for flag in itn]
        ids = torch.tensor([[lang, *EVENT_EMO_QUERY, n] for lang, n in zip(lid, norm)])
        return ids.to(self.device, non_blocking=True)

    def _encode(self, wav, lengths, query):
        feats, n = self.frontend(wav, lengths)
        speech = torch.cat((self.model.embed(query), feats.to(self.dtype)), dim=1)
        lengths = n + query.shape[1]
        out = sanm.encode(self.model.encoder, speech, lengths, self.shifted, self.layer)
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
        wav, lengths = pad_batch(wavs, self.device, bucket_width(max(map(len, wavs)), self.bucket))
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
