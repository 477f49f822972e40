"""FSMN-VAD's post-processing (funasr's `FsmnVADStreaming` state machine), vectorised.

funasr walks every 10 ms frame through Python: a 20-frame voting window with hysteresis turns
per-frame speech/silence into changes (sil→speech, speech→sil, ...), and a three-state machine
turns changes into segments. Here the window is a cumulative sum, the hysteresis a running
"last decisive frame", and the machine jumps from event to event (a start, an end), so Python runs
once per segment, not once per frame.

What funasr's code does, and what this reproduces, per segment:
- start: the first frame t at which the window flips to speech; the segment starts
  `window + lookback` frames earlier, but not before the frame after the previous segment's end;
- end, whichever comes first: (a) `end_silence` consecutive silent window decisions, the end put
  back by the look-back (end silence − look-ahead − 1 frames); (b) the segment reaching
  `max_single_segment_time`; (c) the last frame of the audio;
- after an end, the window is emptied (funasr's ResetDetection) and the search starts again.
The segment covers frames [start, end] inclusive: [start·10 ms, (end + 1)·10 ms].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CHUNK = 4096  # frames examined per step: a few segments' worth


@dataclass(frozen=True)
class Rules:
    frame_ms: int
    window: int           # frames in the voting window
    to_speech: int        # window sum that turns silence into speech (>=)
    to_silence: int       # window sum that turns speech into silence (<=)
    start_latency: int    # frames a start is put back: window + look-back
    end_silence: int      # consecutive silent decisions that end a segment
    end_lookback: int     # frames the end is put back after such a silence
    max_frames: float     # a segment ends once it is longer than this many frames
    speech_noise_thres: float

    @property
    def pivot(self) -> float:
        """The silence posterior at which a frame's decision flips: speech iff 1 - p >= p + threshold."""
        return (1.0 - self.speech_noise_thres) / 2.0

    @classmethod
    def from_options(cls, o, max_end_silence_ms: int) -> "Rules":
        """From funasr's VADXOptions, with a fixed end silence as speechq passes it."""
        if o.detect_mode != 1 or list(o.sil_pdf_ids) != [0] or o.speech_2_noise_ratio != 1.0:
            raise ValueError("only the released FSMN-VAD configuration (multiple utterances, one silence pdf) is supported")
        if o.snr_thres > -86.0 or o.decibel_thres > -60.0:
            # float audio in [-1, 1]: a 25 ms frame has 10·log10(energy + 1e-6) in [-60, 26] dB, so
            # the released gates (-100 dB) never close; other settings would need the decibel track
            raise ValueError("FSMN-VAD SNR/decibel gates above -100 dB are not supported")
        f = o.frame_in_ms
        end_sil_ms = max_end_silence_ms - o.speech_to_sil_time_thres  # funasr's max_end_sil_frame_cnt_thresh
        lookback = int(end_sil_ms / f)
        if o.do_extend:
            lookback = max(0, lookback - int(o.lookahead_time_end_point / f) - 1)
        latency = int(o.window_size_ms / f) + (int(o.lookback_time_start_point / f) if o.do_extend else 0)
        return cls(frame_ms=f, window=int(o.window_size_ms / f), to_speech=int(o.sil_to_speech_time_thres / f),
                   to_silence=int(o.speech_to_sil_time_thres / f), start_latency=latency,
                   end_silence=max(1, math.ceil(end_sil_ms / f)), end_lookback=lookback,
                   max_frames=o.max_single_segment_time / f, speech_noise_thres=o.speech_noise_thres)


def speech_frames(silence_prob: np.ndarray, rules: Rules) -> np.ndarray:
    """Per-frame speech decision from the silence posterior, as funasr's GetFrameState decides it:
    exp(log(1 - p)) >= exp(log(p)) + threshold, in double precision. Frames within a rounding
    error of the threshold are decided with the very same math calls."""
    p = silence_prob.astype(np.float64)
    margin = (1.0 - p) - (p + rules.speech_noise_thres)
    speech = margin >= 0
    for i in np.flatnonzero(np.abs(margin) < 1e-12):
        q = float(p[i])
        speech[i] = q > 0 and math.exp(math.log(1.0 - q)) >= math.exp(math.log(q)) + rules.speech_noise_thres
    return speech


class _Window:
    """The voting window's state for frames [a, b), the window emptied just before frame `reset`."""

    def __init__(self, speech: np.ndarray, rules: Rules):
        self.f = speech.astype(np.int32)
        self.r = rules

    def states(self, reset: int, a: int, b: int, before: bool) -> np.ndarray:
        r = self.r
        lo = max(reset, a - r.window + 1)
        c = np.concatenate(([0], np.cumsum(self.f[lo:b])))
        t = np.arange(a, b)
        total = c[t - lo + 1] - c[np.maximum(t - r.window + 1, reset) - lo]
        n = b - a
        if r.to_speech > r.to_silence:  # plain hysteresis: the last decisive frame rules
            decisive = (total >= r.to_speech) | (total <= r.to_silence)
            last = np.maximum.accumulate(np.where(decisive, np.arange(n), -1))
            return np.where(last >= 0, total[np.maximum(last, 0)] >= r.to_speech, before)
        # overlapping thresholds (the released 15/15): sums inside [to_speech, to_silence] flip the state
        decisive = (total < r.to_speech) | (total > r.to_silence)
        last = np.maximum.accumulate(np.where(decisive, np.arange(n), -1))
        base = np.where(last >= 0, total[np.maximum(last, 0)] > r.to_silence, before)
        return base ^ ((np.arange(n) - last) & 1).astype(bool)


def segments(speech: np.ndarray, rules: Rules) -> list[tuple[int, int]]:
    """[(start_ms, end_ms)] for per-frame speech decisions of a whole stream (the last frame final)."""
    n = int(speech.size)
    window = _Window(speech, rules)
    out: list[tuple[int, int]] = []
    reset, prev_end = 0, -1
    while reset < n:
        onset = _first_onset(window, reset, n)
        if onset is None:
            break
        start = max(prev_end + 1, onset - rules.start_latency)
        detected, end = _end(window, reset, onset, start, n, rules)
        out.append((start * rules.frame_ms, (end + 1) * rules.frame_ms))
        reset, prev_end = detected + 1, end
    return out


def _first_onset(window: _Window, reset: int, n: int) -> int | None:
    before = False
    for a in range(reset, n, CHUNK):
        b = min(n, a + CHUNK)
        w = window.states(reset, a, b, before)
        prev = np.concatenate(([before], w[:-1]))
        hits = np.flatnonzero(w & ~prev)
        if hits.size:
            return a + int(hits[0])
        before = bool(w[-1])
    return None


def _end(window: _Window, reset: int, onset: int, start: int, n: int, rules: Rules) -> tuple[int, int]:
    """(frame at which the end is detected, last frame of the segment) for a segment begun at onset."""
    by_length = start + math.floor(rules.max_frames - 1) + 1  # first t with t - start + 1 > max_frames
    before, run = True, 0
    a = onset + 1
    while a < n and a <= by_length:
        b = min(n, a + CHUNK, by_length + 1)
        w = window.states(reset, a, b, before)
        prev = np.concatenate(([before], w[:-1]))
        silent = ~w & ~prev
        # length of the run of silent decisions ending at each frame, carried across chunks
        idx = np.arange(b - a)
        last_break = np.maximum.accumulate(np.where(silent, -1, idx))
        runs = np.where(last_break >= 0, idx - last_break, idx + 1 + run)
        hits = np.flatnonzero(runs >= rules.end_silence)
        if hits.size:
            t = a + int(hits[0])
            return t, t - rules.end_lookback
        run = int(runs[-1])
        before = bool(w[-1])
        a = b
    if by_length <= n - 1:
        return by_length, by_length
    return n - 1, n - 1
