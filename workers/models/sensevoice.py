"""Batched SenseVoiceSmall forward: one padded batch of segments, language and ITN per segment.

Computes the function of funasr's SenseVoiceSmall.inference (its frontend, four query frames,
encoder and CTC head) for a whole batch at once: fbank/LFR/CMVN batched on the device, fused
attention, greedy CTC decode with one device-to-host copy per batch, tags parsed on the host; with
timings, its `output_timestamp=True` too (workers.models.alignment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shared.models.tokens import parse_tags
from workers.models import alignment, sanm
from workers.models.alignment import Token, Word
from workers.models.features import BatchFrontend
from workers.models.layout import Layout
from workers.runtime.staging import copied, prepare, stage, to_device, upload

EVENT_EMO_QUERY = (1, 2)


@dataclass
class Transcript:
    text: str
    language: str | None
    emotion: str | None
    event: str | None
    itn: bool | None
    # with timings on: funasr's output_timestamp=True, times in seconds within the segment
    tokens: list[Token] | None = None
    words: list[Word] | None = None


class SenseVoice:
    """The batched forward. Built eager; the engine (workers.gpu.engine) may then replace `layer`
    (one SAN-M layer) or `forward` (the whole forward) by compiled copies, set `shifted` (the FSMN
    memory as shifted sums, which compile into one kernel) and give `replay`, a CUDA-graph cache
    (workers.runtime.graphs.GraphCache) that replays the packed encoder."""

    def __init__(self, automodel, device: torch.device, dtype: torch.dtype = torch.float32,
                 packed: bool = True, attention: str = "auto", timings: bool = False):
        """packed: a batch's segments end to end (workers.models.layout) rather than padded to the
        longest. attention, when packed: "padded" (gathered back to the padded layout), "varlen" (on
        the packed sequence) or "auto" (varlen where FlashAttention runs it: CUDA, half precision).
        timings: every transcript also carries the time of each token and word (workers.models.alignment)."""
        half = dtype in (torch.float16, torch.bfloat16)
        if attention == "auto":
            attention = "varlen" if device.type == "cuda" and half else "padded"
        if attention not in ("padded", "varlen"):
            raise ValueError(f"unknown attention {attention!r}")
        self.packed = packed
        self.varlen = packed and attention == "varlen"
        self.model = prepare(automodel.model, device, dtype)
        self.tokenizer = automodel.kwargs["tokenizer"]
        self.device = device
        self.dtype = dtype
        self.frontend = BatchFrontend(automodel.kwargs["frontend"], device)
        self.gap = sanm.gap(self.model.encoder)
        # CTC head padded to a multiple of 128 classes: GEMM libraries pick far better kernels
        # for 25088 than for 25055 outputs. Extra classes get -inf and never win the argmax.
        head = self.model.ctc.ctc_lo
        self.vocab = head.weight.shape[0]
        padded = -(-self.vocab // 128) * 128
        self.head_weight = torch.zeros(padded, head.weight.shape[1], dtype=dtype, device=device)
        self.head_weight[: self.vocab] = head.weight.detach()
        self.head_bias = torch.full((padded,), float("-inf"), dtype=dtype, device=device)
        self.head_bias[: self.vocab] = head.bias.detach()
        self.timings = timings
        if timings:  # the head on the host: the alignment scores each segment's own pieces there
            self.host_weight = head.weight.detach().to(self.dtype).float().cpu()
            self.host_bias = head.bias.detach().to(self.dtype).float().cpu()
        # what the engine may replace (eager defaults)
        self.layer = sanm.layer
        self.shifted = False
        self.forward = self._hidden
        self.replay = None

    def _query(self, languages: list[str], itn: list[bool]) -> torch.Tensor:
        lid = [self.model.lid_dict.get(lang, 0) for lang in languages]
        norm = [self.model.textnorm_dict["withitn" if flag else "woitn"] for flag in itn]
        ids = torch.tensor([[lang, *EVENT_EMO_QUERY, n] for lang, n in zip(lid, norm)])
        return to_device(ids, self.device)

    def _speech(self, wav, lengths, query) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded (B, T, 560) features with the query frames in front, and their valid lengths."""
        feats, n = self.frontend(wav, lengths)
        return torch.cat((self.model.embed(query), feats.to(self.dtype)), dim=1), n + query.shape[1]

    def _layout(self, speech, query, host_lengths: torch.Tensor | None) -> Layout | None:
        if not self.packed or host_lengths is None:
            return None
        frames = (self.frontend.frames(host_lengths) + query.shape[1]).numpy()  # on the host: no device sync
        # replayed, shapes are rounded up to the graphs' buckets so that one graph serves many batches
        return Layout.build(frames, speech.shape[1], self.gap, self.device, self.varlen, self.replay is not None)

    def _head(self, out: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(out, self.head_weight, self.head_bias)

    def _hidden(self, wav, lengths, query, host_lengths=None):
        """Encoder output, valid lengths and the layout: packed (1, N, 512) when `host_lengths` (the
        samples of each row, on the host) are given and packing is on, else padded (B, T, 512).
        Replayed from a CUDA graph when the engine gave one."""
        speech, lengths = self._speech(wav, lengths, query)
        layout = self._layout(speech, query, host_lengths)
        if self.replay is None or layout is None:
            return sanm.encode(self.model.encoder, speech, lengths, self.shifted, self.layer, layout), lengths, layout
        xs = sanm.embed_packed(self.model.encoder, speech, layout)
        longest = layout.longest

        def forward(xs, valid, seqs):
            return sanm.layers(self.model.encoder, xs, valid, self.shifted, self.layer, seqs=seqs, longest=longest)

        return self.replay.run(layout.key, forward, xs, layout.valid, layout.seqs), lengths, layout

    def _encode(self, wav, lengths, query, host_lengths: torch.Tensor | None = None):
        """Logits, valid lengths and the layout (packed (1, N, V) or padded (B, T, V), as `_hidden`)."""
        out, lengths, layout = self.forward(wav, lengths, query, host_lengths)
        return self._head(out), lengths, layout

    @torch.inference_mode()
    def logits(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool]):
        """CTC log-probabilities (B, T, V) in float32 and valid lengths."""
        staged = stage(wavs, self.device)
        wav, lengths = upload(staged, self.device)
        logits, lengths, layout = self._encode(wav, lengths, self._query(languages, itn), staged[1])
        if layout is not None:
            logits = layout.unpack(logits[0])
        return torch.log_softmax(logits[..., : self.vocab].float(), dim=-1), lengths

    @torch.inference_mode()
    def launch(self, wav: torch.Tensor, lengths: torch.Tensor, host_lengths: torch.Tensor,
               languages: list[str], itn: list[bool]) -> Pending:
        """Queue the batch on the device and start copying the best tokens back; returns at once."""
        out, lengths, layout = self.forward(wav, lengths, self._query(languages, itn), host_lengths)
        logits = self._head(out)
        best = logits.argmax(dim=-1)
        frames = None
        if self.timings:  # what the alignment needs of every frame: its encoder output and log-sum-exp
            frames = (out.to("cpu", non_blocking=True), _logsumexp(logits).to("cpu", non_blocking=True))
        return Pending(best.to(torch.int32).to("cpu", non_blocking=True),
                       lengths.to("cpu", non_blocking=True), layout, copied(), self, frames)

    def _pending(self, wavs, languages, itn) -> Pending:
        staged = stage(wavs, self.device)
        wav, lengths = upload(staged, self.device)
        return self.launch(wav, lengths, staged[1], languages, itn)

    def token_ids(self, wavs, languages, itn) -> list[np.ndarray]:
        """Best CTC token per frame, one array per segment (waits for the device)."""
        return self._pending(wavs, languages, itn).rows()

    def decode(self, rows: list[np.ndarray], frames: tuple[list, list] | None = None) -> list[Transcript]:
        """Transcripts of the best tokens; with `frames` (each segment's encoder output and
        log-sum-exp per frame, on the host), the time of every token and word as well."""
        texts = []
        for seq in rows:
            if seq.size:
                seq = seq[np.concatenate(([True], seq[1:] != seq[:-1]))]
            texts.append(self.tokenizer.decode(seq[seq != self.model.blank_id].tolist()))
        out = [Transcript(**parse_tags(text)) for text in texts]
        if frames is not None:
            timed = alignment.align(self.tokenizer, texts, rows, *frames, self.host_weight, self.host_bias,
                                    self.model.blank_id)
            for transcript, t in zip(out, timed):
                transcript.tokens, transcript.words = (t.tokens, t.words) if t is not None else ([], [])
        return out

    def __call__(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool]) -> list[Transcript]:
        if not wavs:
            return []
        return self._pending(wavs, languages, itn).transcripts()


@dataclass
class Pending:
    """Best tokens on their way to the host (non-blocking copies); `rows()` waits for them."""
    best: torch.Tensor  # (B, T) padded or (1, N) packed
    lengths: torch.Tensor
    layout: Layout | None
    done: torch.cuda.Event | None
    model: SenseVoice
    frames: tuple[torch.Tensor, torch.Tensor] | None = None  # with timings: encoder output, log-sum-exp

    def rows(self) -> list[np.ndarray]:
        return self._split(self.best.numpy())

    def _split(self, values):
        if self.done is not None:
            self.done.synchronize()
        if self.layout is not None:
            return self.layout.rows(values[0])
        return [row[:n] for row, n in zip(values, self.lengths.numpy())]

    def transcripts(self) -> list[Transcript]:
        """The decoded batch (waits for the device), timed when the model's timings are on."""
        rows = self.rows()
        if self.frames is None:
            return self.model.decode(rows)
        hidden, lse = self.frames
        return self.model.decode(rows, (self._split(hidden), self._split(lse)))


def _logsumexp(logits: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """float32 log-sum-exp over the classes of every frame, a few thousand frames at a time (the
    float32 copy of a whole batch's logits would take gigabytes)."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for i in range(0, flat.shape[0], chunk):
        out[i:i + chunk] = torch.logsumexp(flat[i:i + chunk].float(), dim=-1)
    return out.reshape(logits.shape[:-1])
