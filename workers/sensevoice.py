"""Batched SenseVoiceSmall forward: one padded batch of segments, language and ITN per segment.

Computes the function of funasr's SenseVoiceSmall.inference (same frontend, same four query
frames, same encoder and CTC head) for a whole batch at once, with one device-to-host copy for
the greedy CTC decode instead of one per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shared.models.tokens import parse_tags

EVENT_EMO_QUERY = (1, 2)


@dataclass
class Transcript:
    text: str
    language: str | None
    emotion: str | None
    event: str | None
    itn: bool | None


class SenseVoice:
    def __init__(self, automodel, device: torch.device, dtype: torch.dtype = torch.float32):
        self.model = automodel.model.to(device).eval()
        self.frontend = automodel.kwargs["frontend"]
        self.frontend.dither = 0.0  # funasr defaults to 1.0 (random): results must be reproducible
        self.tokenizer = automodel.kwargs["tokenizer"]
        self.device = device
        self.dtype = dtype
        if self.frontend.cmvn is not None:
            self.frontend.cmvn = self.frontend.cmvn.to(device)

    def features(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.int64)
        padded = torch.zeros(len(wavs), int(lengths.max()), dtype=torch.float32)
        for i, w in enumerate(wavs):
            padded[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        padded = padded.pin_memory() if self.device.type == "cuda" else padded
        feats, feat_lens = self.frontend(padded.to(self.device, non_blocking=True), lengths)
        return feats.to(self.device), feat_lens.to(self.device)

    @torch.inference_mode()
    def logits(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool]):
        """CTC log-probabilities (B, T, V) and valid lengths, as funasr's inference computes them."""
        feats, feat_lens = self.features(wavs)
        model = self.model
        lid = [model.lid_dict.get(lang, 0) for lang in languages]
        norm = [model.textnorm_dict["withitn" if flag else "woitn"] for flag in itn]
        ids = torch.tensor([[l, *EVENT_EMO_QUERY, n] for l, n in zip(lid, norm)], device=self.device)
        speech = torch.cat((model.embed(ids), feats), dim=1)
        lengths = feat_lens + ids.shape[1]
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            encoder_out, encoder_lens = model.encoder(speech, lengths)
            if isinstance(encoder_out, tuple):
                encoder_out = encoder_out[0]
            logp = model.ctc.log_softmax(encoder_out)
        return logp.float(), encoder_lens

    def __call__(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool]) -> list[Transcript]:
        if not wavs:
            return []
        logp, lens = self.logits(wavs, languages, itn)
        best = logp.argmax(dim=-1).cpu().numpy()  # one copy for the whole batch
        lens = lens.cpu().numpy()
        out = []
        for row, n in zip(best, lens):
            seq = row[:n]
            if seq.size:
                seq = seq[np.concatenate(([True], seq[1:] != seq[:-1]))]
            tokens = seq[seq != self.model.blank_id].tolist()
            fields = parse_tags(self.tokenizer.decode(tokens))
            out.append(Transcript(**fields))
        return out
