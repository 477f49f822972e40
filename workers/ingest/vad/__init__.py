"""Speech segments from FSMN-VAD (real weights, vendored), for many streams at once.

funasr builds and loads the model (its config, weights, CMVN and options); speechq runs the
frontend and network batched across streams (`scorer`) and the post-processing vectorised
(`decisions`). The segments equal funasr AutoModel's with `max_end_silence_time=800`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from workers.ingest.vad import decisions
from workers.ingest.vad.scorer import Scorer, StreamState

_local = threading.local()
MAX_END_SILENCE_MS = 800
CHUNK_SAMPLES = 60 * 16000  # default block per stream (SPEECHQ_VAD_BLOCK_SECONDS): bounded memory whatever the length


class Detector:
    def __init__(self, directory: Path, precision: str = "fp32", block_samples: int = CHUNK_SAMPLES,
                 device: str = "cpu"):
        from shared.models.registry import load_automodel

        dtype, checked = PRECISIONS[precision]
        auto = load_automodel(directory, device="cpu")
        self.rules = decisions.Rules.from_options(auto.model.vad_opts, MAX_END_SILENCE_MS)
        self.precision = precision
        self.block = block_samples
        self.scorer = Scorer(auto.model, auto.kwargs["frontend"], dtype=dtype,
                             pivot=self.rules.pivot if checked else None, device=device)

    def run(self, streams: list[Iterable[np.ndarray]]) -> list[list[tuple[int, int]]]:
        """Segments (ms) of each 16 kHz mono float32 stream; all streams go through the network together."""
        out: list[list[tuple[int, int]]] = [[] for _ in streams]
        for ended in self.each(streams):
            for i, spans in ended:
                out[i] = spans
        return out

    def each(self, streams: list[Iterable[np.ndarray]]) -> Iterator[list[tuple[int, list[tuple[int, int]]]]]:
        """After each block in which some streams end: [(index, segments in ms), ...] of those streams, so
        the shortest streams come first; all streams still running go through the network together."""
        feeds = [_blocks(s, self.block) for s in streams]
        states = [StreamState() for _ in streams]
        speech: list[list[np.ndarray]] = [[] for _ in streams]
        active = list(range(len(streams)))
        while active:
            feats, still = [], []
            for i in active:
                block, final = next(feeds[i], (None, True))
                feats.append(self.scorer.features(states[i], block if block is not None else np.zeros(0, np.float32),
                                                  final))
                if not final:
                    still.append(i)
            probs = self.scorer.silence([states[i] for i in active], feats)
            for i, p in zip(active, probs):
                speech[i].append(decisions.speech_frames(p, self.rules))
            ended = sorted(set(active).difference(still))
            active = still
            if ended:
                yield [(i, self._segments(speech[i], states[i])) for i in ended]
                for i in ended:
                    speech[i] = []

    def _segments(self, flags: list[np.ndarray], state: StreamState) -> list[tuple[int, int]]:
        if state.samples < self.scorer.logmel.win:
            return []
        return decisions.segments(np.concatenate(flags), self.rules)


# network dtype, and whether frames near the decision threshold are recomputed in fp32
PRECISIONS = {"fp32": (torch.float32, False), "mixed": (torch.bfloat16, True), "bf16": (torch.bfloat16, False)}


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """`auto` is `mixed` on CPUs with native bf16, else `fp32` (both give funasr's segments). On a GPU the
    network always runs `mixed`: bf16 there, the frames near the threshold again in fp32 on the CPU."""
    if device != "cpu":
        return "mixed"
    if precision == "auto":
        return "mixed" if cpu_has_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown VAD precision {precision!r}; one of auto, {', '.join(PRECISIONS)}")
    return precision


def detector(directory: Path, precision: str | None = None) -> Detector:
    """This thread's detector for a model folder (built once: funasr loads and checks the weights)."""
    from shared.config import get_settings

    settings = get_settings()
    device = settings.vad_device
    precision = resolve_precision(precision or settings.vad_precision, device)
    block = int(settings.vad_block_seconds * 16000)
    key = (str(directory), precision, block, device)
    cached = getattr(_local, "vad", None)
    if cached is None or cached[0] != key:
        torch.set_num_threads(settings.vad_threads)
        cached = (key, Detector(Path(directory), precision, block, device))
        _local.vad = cached
    return cached[1]


def _blocks(stream: Iterable[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, bool]]:
    """Re-cut a stream into blocks of `size` samples, each with a flag saying whether it is the last."""
    pending = np.zeros(0, dtype=np.float32)
    for block in stream:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        pending = np.concatenate((pending, block)) if pending.size else block
        while pending.size > size:  # keep at least one sample back for the last block
            yield pending[:size], False
            pending = pending[size:]
    yield pending, True


def segments_many(streams: list[Iterable[np.ndarray]], directory: Path, max_segment_ms: int,
                  precision: str | None = None) -> list[list[tuple[int, int]]]:
    """Segments of several streams (the channels of one or more calls) in one batched pass."""
    return [split_long(spans, max_segment_ms) for spans in detector(directory, precision).run(streams)]


def segments_each(streams: list[Iterable[np.ndarray]], directory: Path, max_segment_ms: int,
                  precision: str | None = None) -> Iterator[list[tuple[int, list[tuple[int, int]]]]]:
    """Several streams in one batched pass: after each block in which some end, [(index, segments), ...]
    of those."""
    for ended in detector(directory, precision).each(streams):
        yield [(i, split_long(spans, max_segment_ms)) for i, spans in ended]


def segments_stream(blocks: Iterable[np.ndarray], directory: Path, max_segment_ms: int,
                    precision: str | None = None) -> list[tuple[int, int]]:
    """Segments of 16 kHz mono audio that arrives in blocks (any sizes), with bounded memory."""
    return segments_many([blocks], directory, max_segment_ms, precision)[0]


def segments(audio: np.ndarray, directory: Path, max_segment_ms: int,
             precision: str | None = None) -> list[tuple[int, int]]:
    """[(start_ms, end_ms), ...] of speech in 16 kHz float32 mono audio; long ones split."""
    return segments_stream([audio], directory, max_segment_ms, precision)


def split_long(spans: list[tuple[int, int]], max_ms: int) -> list[tuple[int, int]]:
    """Cut segments longer than max_ms into near-equal pieces no longer than max_ms."""
    out = []
    for start, end in spans:
        pieces = max(1, -(-(end - start) // max_ms))
        step = (end - start) / pieces
        edges = [start + round(i * step) for i in range(pieces)] + [end]
        out.extend(zip(edges[:-1], edges[1:]))
    return out
