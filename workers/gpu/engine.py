"""The models of one GPU worker process: loaded once, warmed up, then run batch after batch."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from shared.config import Settings
from shared.models import registry
from workers.models.emotion2vec import Emotion2vec, EmotionPending, EmotionScores
from workers.models.sensevoice import Pending, SenseVoice, Transcript
from workers.runtime.compiling import compiled
from workers.runtime import memory
from workers.runtime.graphs import GraphCache
from workers.runtime.options import Options
from workers.runtime.staging import stage, upload

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    transcript: Transcript
    emotion: EmotionScores


def optimise_sensevoice(model: SenseVoice, options: Options) -> None:
    """Compilation (each SAN-M layer, or the whole forward) and CUDA graphs of the packed encoder."""
    if options.compile == "layers":
        model.layer = compiled(model.layer)
    elif options.compile == "model":
        model.forward = compiled(model.forward)
    model.shifted = options.compile != "off"  # the FSMN memory as shifted sums fuses when compiled
    if options.cuda_graphs:
        model.replay = GraphCache()


def optimise_emotion2vec(model: Emotion2vec, options: Options) -> None:
    """Compilation: each transformer block and the CNN front, or the whole encoder."""
    if options.compile == "layers":
        model.block = compiled(model.block)
        model.front = compiled(model.front)
    elif options.compile == "model":
        model.encode = compiled(model.encode)


def optimise(sensevoice: SenseVoice, emotion: Emotion2vec, options: Options) -> None:
    """Apply the options to both models."""
    optimise_sensevoice(sensevoice, options)
    optimise_emotion2vec(emotion, options)


def build_models(sv_automodel, e2v_automodel, device: torch.device,
                 options: Options) -> tuple[SenseVoice, Emotion2vec]:
    """Both batched forwards on `device`, optimised as `options` say."""
    if device.type == "cuda":  # before compiling: the attention backend is chosen at trace time
        torch.backends.cuda.enable_cudnn_sdp(False)  # cuDNN plans anew for every batch shape (BENCHMARKS.md)
    # word timings are a job option (jobs.word_timings): the host copy of the CTC head is always kept, and
    # each batch copies back its frames and aligns only the segments whose job asked (Engine._launch)
    sensevoice = SenseVoice(sv_automodel, device, options.torch_dtype, packed=options.packed, timings=True)
    emotion = Emotion2vec(e2v_automodel, device, options.torch_dtype)
    optimise(sensevoice, emotion, options)
    return sensevoice, emotion


class Engine:
    def __init__(self, options: Options, sensevoice_dir, emotion2vec_dir, device: torch.device | None = None):
        self.device = device or torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        self.options = options.validated(self.device)
        started = time.perf_counter()
        budget = memory.apply(self.device, self.options.memory_gb) if self.device.type == "cuda" else None
        sv = registry.load_automodel(sensevoice_dir, device=str(self.device))
        e2v = registry.load_automodel(emotion2vec_dir, device=str(self.device))
        self.sensevoice, self.emotion = build_models(sv, e2v, self.device, self.options)
        # seconds of audio per forward: the whole batch unless the memory budget says less
        self.chunk_seconds = self.options.batch_seconds
        if budget is not None:
            weights = torch.cuda.memory_allocated(self.device)
            self.chunk_seconds = budget.chunk_seconds(weights, self.options.batch_seconds,
                                                      self.options.max_segment_seconds)
            log.info("weights %.2f GiB; up to %.0f s of audio per forward", weights / memory.GIB, self.chunk_seconds)
        self.provenance = {
            "asr": registry.provenance(registry.SENSEVOICE, sensevoice_dir),
            "emotion": registry.provenance(registry.EMOTION2VEC, emotion2vec_dir),
        }
        for p in self.provenance.values():
            if p.random_weights:
                log.warning("%s at %s has RANDOM weights: its output is not a transcript", p.name, p.path)
        self.warm_up()
        log.info("models ready on %s (%s, CUDA_VISIBLE_DEVICES=%s) in %.1f s", self.device, self.options,
                 os.environ.get("CUDA_VISIBLE_DEVICES", "-"), time.perf_counter() - started)

    def warm_up(self) -> None:
        """Batches of several sizes and lengths, the last as large as a packed batch gets, so that the
        compiled layers have met general shapes (and 64-bit indexing where a full batch needs it)
        before the first real batch arrives. Batches of one segment, short and long, come too: torch.compile
        specialises a dimension of size 1, so the first such batch of a job (a flushed leftover, a job of one
        short call) would otherwise wait for a recompilation (17.9 s measured on an H100)."""
        rng = np.random.default_rng(0)
        longest = self.options.max_segment_seconds
        shapes = [(2, 1.0, 1 / 3), (5, longest / 3, 1 / 3)]
        if self.options.compile != "off":
            shapes += [(1, 0.3, 1), (1, longest, 1), (11, longest, 1 / 3),
                       (max(int(self.chunk_seconds // longest), 11), longest, 1)]
        for n, top, low in shapes:
            # the last: equal lengths, so that emotion2vec runs it as one run of the whole budget
            seconds = np.linspace(top, top * low, n) + rng.uniform(0, 0.05, n) * (low < 1)
            wavs = [(0.05 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]
            self.run(wavs, ["auto"] * n, [True] * n)

    def run(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool],
            timed: list[bool] | None = None) -> list[SegmentResult]:
        return self.submit(wavs, languages, itn, timed).results()

    def submit(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool],
               timed: list[bool] | None = None) -> InFlight | Chunked:
        """Queue both models on the device and return at once: the audio goes up once for both, and
        the host is free to fetch and stage the next batch while the device works. A batch larger than
        the memory budget's forward runs as several; one that runs out of memory is halved. `timed`:
        per segment, whether its job asked for word timings (none when not given)."""
        timed = [False] * len(wavs) if timed is None else list(timed)
        seconds = np.array([len(w) for w in wavs], dtype=np.float64) / 16000
        parts = memory.chunks(seconds, self.chunk_seconds)
        if len(parts) <= 1:
            return self._fitting(wavs, languages, itn, timed)
        return Chunked([self._fitting(wavs[p], languages[p], itn[p], timed[p]) for p in parts])

    def _fitting(self, wavs, languages, itn, timed) -> InFlight | Chunked:
        try:
            # the frames the alignment needs come back to the host only for a forward with a timed segment
            self.sensevoice.timings = any(timed)
            flight = self._launch(wavs, languages, itn)
            flight.timed = timed
            return flight
        except torch.OutOfMemoryError:
            if len(wavs) < 2:
                raise
        # outside the except block: its traceback (and the failed forward's tensors) is gone by now
        torch.cuda.empty_cache()
        half = len(wavs) // 2
        log.warning("out of GPU memory on %d segments (%.0f s of audio): running them as two halves",
                    len(wavs), sum(len(w) for w in wavs) / 16000)
        return Chunked([self._fitting(wavs[:half], languages[:half], itn[:half], timed[:half]),
                        self._fitting(wavs[half:], languages[half:], itn[half:], timed[half:])])

    def _launch(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool]) -> InFlight:
        if not wavs:
            return InFlight(None, None, Span.start(self.device))
        staged = stage(wavs, self.device)
        span = Span.start(self.device)  # device time starts with the upload, after the host's part
        wav, lengths = upload(staged, self.device)
        host = staged[1]  # the samples of each segment, still on the host
        tokens = self.sensevoice.launch(wav, lengths, host, languages, itn)
        emotions = self.emotion.launch(wav, lengths, host)
        span.stop()
        return InFlight(tokens, emotions, span)


@dataclass
class Span:
    """The device time of one batch: from its upload to its last copy back (events on CUDA; on the
    CPU the work is done by the time `stop` runs)."""
    begin: torch.cuda.Event | float
    end: torch.cuda.Event | float | None = None

    @classmethod
    def start(cls, device: torch.device) -> Span:
        if device.type != "cuda":
            return cls(time.perf_counter())
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return cls(event)

    def stop(self) -> None:
        if isinstance(self.begin, float):
            self.end = time.perf_counter()
        else:
            self.end = torch.cuda.Event(enable_timing=True)
            self.end.record()

    def seconds(self) -> float:
        """Waits for the end of the span."""
        if self.end is None:
            return 0.0
        if isinstance(self.begin, float):
            return self.end - self.begin
        self.end.synchronize()
        return self.begin.elapsed_time(self.end) / 1000


@dataclass
class InFlight:
    """One batch's work queued on the device; `results()` waits for it and decodes on the host."""
    tokens: Pending | None
    emotions: EmotionPending | None
    span: Span
    timed: list[bool] | None = None  # per segment: align it (its job asked for word timings); set by the engine

    def device_seconds(self) -> float:
        return self.span.seconds()

    def results(self) -> list[SegmentResult]:
        if self.tokens is None:
            return []
        transcripts = timed_transcripts(self.tokens, self.timed or [])
        return [SegmentResult(t, e) for t, e in zip(transcripts, self.emotions.results())]


def timed_transcripts(pending: Pending, timed: list[bool]) -> list[Transcript]:
    """The batch's transcripts, with tokens and words on the `timed` segments only: the alignment runs on
    those alone (the others keep tokens and words None)."""
    if pending.frames is None or all(timed):  # none timed (no frames came back), or all
        return pending.transcripts()
    rows = pending.rows()
    hidden, lse = (pending._split(x) for x in pending.frames)  # noqa: SLF001 - the same split as the rows'
    chosen = [i for i, t in enumerate(timed) if t]
    rest = [i for i, t in enumerate(timed) if not t]
    model = pending.model
    out: list[Transcript | None] = [None] * len(rows)
    aligned = model.decode([rows[i] for i in chosen], ([hidden[i] for i in chosen], [lse[i] for i in chosen]))
    for i, t in zip(chosen, aligned):
        out[i] = t
    for i, t in zip(rest, model.decode([rows[i] for i in rest])):
        out[i] = t
    return out


@dataclass
class Chunked:
    """A batch run as several forwards, in order."""
    parts: list[InFlight | Chunked]

    def device_seconds(self) -> float:
        return sum(p.device_seconds() for p in self.parts)

    def results(self) -> list[SegmentResult]:
        return [r for p in self.parts for r in p.results()]


@contextmanager
def exit_on_cuda_error():
    """A CUDA error leaves the device unusable in this process: exit, so that the supervisor restarts the
    worker (unacked messages are redelivered; a batch left `running` is re-run by the reconciler)."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise  # the device is still usable: the batch is retried (Engine.submit halves it first)
    except RuntimeError as exc:
        if "CUDA" in str(exc) or "cuda" in str(exc):
            log.critical("CUDA error, exiting so that the supervisor restarts this worker: %s", exc)
            os._exit(70)
        raise


_engine: Engine | None = None


def get_engine(settings: Settings) -> Engine:
    """This process's engine, built from the settings on first use (an invalid combination of GPU
    settings raises workers.runtime.options.InvalidOptions here, when the worker starts)."""
    global _engine
    if _engine is None:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        _engine = Engine(Options.from_settings(settings, device), settings.sensevoice_dir, settings.emotion2vec_dir,
                         device)
    return _engine
