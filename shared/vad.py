"""Speech segments from FSMN-VAD (real weights, vendored), one model instance per thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

_local = threading.local()
MAX_END_SILENCE_MS = 800


def _model(directory: Path):
    cached = getattr(_local, "vad", None)
    if cached is None or cached[0] != str(directory):
        from shared.models.registry import load_automodel

        cached = (str(directory), load_automodel(directory, device="cpu"))
        _local.vad = cached
    return cached[1]


def segments(audio: np.ndarray, directory: Path, max_segment_ms: int) -> list[tuple[int, int]]:
    """[(start_ms, end_ms), ...] of speech in 16 kHz float32 mono audio; long ones split."""
    if audio.size < 400 or not np.any(audio):
        return []
    result = _model(directory).generate(input=audio, max_end_silence_time=MAX_END_SILENCE_MS,
                                        disable_pbar=True)
    spans = [(int(s), int(e)) for s, e in (result[0].get("value") or []) if e > s]
    return split_long(spans, max_segment_ms)


CHUNK_SAMPLES = 60 * 16000  # funasr's offline VAD works in 60 s chunks internally: keep its boundaries


def segments_stream(blocks, directory: Path, max_segment_ms: int) -> list[tuple[int, int]]:
    """Segments of 16 kHz mono audio that arrives in blocks (any sizes), with bounded memory.

    The audio is re-cut into 60 s chunks and fed to FSMN-VAD with its cache, the last one marked
    final: the same chunks funasr's own offline call makes, hence the same segments.
    """
    model = _model(directory)
    cache: dict = {}
    spans: list[tuple[int, int]] = []
    pending = np.zeros(0, dtype=np.float32)

    def feed(chunk: np.ndarray, final: bool) -> None:
        result = model.generate(input=chunk, cache=cache, is_final=final, chunk_size=60000,
                                max_end_silence_time=MAX_END_SILENCE_MS, disable_pbar=True)
        spans.extend((int(s), int(e)) for s, e in (result[0].get("value") or []) if e > s >= 0)

    total = 0
    for block in blocks:
        total += block.size
        pending = np.concatenate((pending, block.astype(np.float32, copy=False)))
        while pending.size > CHUNK_SAMPLES:  # keep at least one sample back for the final call
            feed(pending[:CHUNK_SAMPLES], False)
            pending = pending[CHUNK_SAMPLES:]
    if total < 400:
        return []
    feed(pending, True)
    return split_long(spans, max_segment_ms)


def split_long(spans: list[tuple[int, int]], max_ms: int) -> list[tuple[int, int]]:
    """Cut segments longer than max_ms into near-equal pieces no longer than max_ms."""
    out = []
    for start, end in spans:
        pieces = max(1, -(-(end - start) // max_ms))
        step = (end - start) / pieces
        edges = [start + round(i * step) for i in range(pieces)] + [end]
        out.extend(zip(edges[:-1], edges[1:]))
    return out
