"""Loudness of segments, measured where the audio is at hand (the ingest worker, when segments are cut).

LUFS: integrated loudness per ITU-R BS.1770-4 (pyloudnorm), for segments of at least one 400 ms gating block;
dBFS: the RMS level relative to full scale (a 0 dBFS square wave). Silence gives None for both.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pyloudnorm
import scipy.signal

from shared.storage import SAMPLE_RATE

BLOCK_S = 0.4  # pyloudnorm's gating block: shorter audio has no integrated loudness
ABSOLUTE_GATE = -70.0  # LUFS


@lru_cache(maxsize=4)
def _k_weighting(rate: int) -> tuple[np.ndarray, float]:
    """pyloudnorm's K-weighting (its high-shelf and high-pass stages at `rate`) as one second-order-sections
    filter and its gain. pyloudnorm recomputes the coefficients on every call; here they are made once."""
    stages = list(pyloudnorm.Meter(rate, block_size=BLOCK_S)._filters.values())
    sos = np.array([np.concatenate([np.asarray(st.b, float), np.asarray(st.a, float)]) for st in stages])
    return sos, float(np.prod([st.passband_gain for st in stages]))


def rms_dbfs(audio: np.ndarray) -> float | None:
    if audio.size == 0:
        return None
    rms = math.sqrt(float(np.mean(np.square(audio, dtype=np.float64))))
    return round(20 * math.log10(rms), 2) if rms > 0 else None


def lufs(audio: np.ndarray, rate: int = SAMPLE_RATE) -> float | None:
    """pyloudnorm's integrated loudness of mono audio, about twice as fast (this runs on every segment, in the
    ingest worker): its K-weighting with coefficients made once, then the BS.1770-4 gating over 400 ms blocks
    every 100 ms, each block's energy the sum of its four 100 ms hops' sums (one pass over the samples) instead
    of a Python loop per block. Equal to `pyloudnorm.Meter(rate).integrated_loudness` to 0.01 LU
    (tests/unit/analytics/test_audio.py)."""
    if audio.size < int(BLOCK_S * rate):
        return None
    sos, gain = _k_weighting(rate)
    x = scipy.signal.sosfilt(sos, np.asarray(audio, dtype=np.float64))  # the gain applies to the energies
    step = 0.25  # 75 % overlap
    blocks = int(np.round((x.size / rate - BLOCK_S) / (BLOCK_S * step))) + 1
    hops = round(1 / step)  # a block is this many hops long
    edges = (BLOCK_S * step * rate * np.arange(blocks + hops)).astype(np.int64)  # block j: edges[j] to [j + hops]
    power = np.square(x)
    power = np.pad(power, (0, max(0, edges[-1] - power.size)))[:edges[-1]]  # past the end counts as silence
    per_hop = np.add.reduceat(power, edges[:-1])
    z = np.convolve(per_hop, np.ones(hops), mode="valid") * (gain * gain / (BLOCK_S * rate))
    with np.errstate(divide="ignore"):
        level = -0.691 + 10.0 * np.log10(z)
    above = z[level >= ABSOLUTE_GATE]
    if not above.size:
        return None
    relative = -0.691 + 10.0 * math.log10(above.mean()) - 10.0
    kept = z[(level > relative) & (level > ABSOLUTE_GATE)]
    if not kept.size or kept.mean() <= 0:
        return None
    return round(-0.691 + 10.0 * math.log10(kept.mean()), 2)


def segment_levels(samples: np.ndarray, spans_ms, rate: int = SAMPLE_RATE) -> list[tuple[float | None, float | None]]:
    """(LUFS, dBFS) of each (start_ms, end_ms) span of one channel's samples (a memory map is fine: only the
    spans are read)."""
    out = []
    for start, end in spans_ms:
        clip = samples[start * rate // 1000:end * rate // 1000]
        out.append((lufs(clip, rate), rms_dbfs(clip)))
    return out
