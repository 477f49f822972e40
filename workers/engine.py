"""The models of one GPU worker process: loaded once, warmed up, then run batch after batch."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from shared.config import Settings
from shared.models import registry
from workers.emotion import Emotion2vec, EmotionScores
from workers.sensevoice import SenseVoice, Transcript

log = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class SegmentResult:
    transcript: Transcript
    emotion: EmotionScores


class Engine:
    def __init__(self, settings: Settings):
        self.device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        dtype = DTYPES[settings.dtype] if self.device.type == "cuda" else torch.float32
        started = time.perf_counter()
        sv = registry.load_automodel(settings.sensevoice_dir, device=str(self.device))
        e2v = registry.load_automodel(settings.emotion2vec_dir, device=str(self.device))
        compile = settings.compile and self.device.type == "cuda"
        self.sensevoice = SenseVoice(sv, self.device, dtype, compile=compile)
        self.emotion = Emotion2vec(e2v, self.device, dtype, compile=compile)
        self.provenance = {
            "asr": registry.provenance(registry.SENSEVOICE, settings.sensevoice_dir),
            "emotion": registry.provenance(registry.EMOTION2VEC, settings.emotion2vec_dir),
        }
        for p in self.provenance.values():
            if p.random_weights:
                log.warning("%s at %s has RANDOM weights: its output is not a transcript", p.name, p.path)
        self.warm_up()
        log.info("models ready on %s (%s, CUDA_VISIBLE_DEVICES=%s) in %.1f s", self.device, dtype,
                 os.environ.get("CUDA_VISIBLE_DEVICES", "-"), time.perf_counter() - started)

    def warm_up(self) -> None:
        """Two batch shapes: compiled graphs become shape-generic on the second."""
        rng = np.random.default_rng(0)
        for n, seconds in ((2, 1.0), (3, 2.5)):
            wavs = [(0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(n)]
            self.run(wavs, ["auto"] * n, [True] * n)

    def run(self, wavs: list[np.ndarray], languages: list[str], itn: list[bool]) -> list[SegmentResult]:
        transcripts = self.sensevoice(wavs, languages, itn)
        emotions = self.emotion(wavs)
        return [SegmentResult(t, e) for t, e in zip(transcripts, emotions)]


_engine: Engine | None = None


def get_engine(settings: Settings) -> Engine:
    global _engine
    if _engine is None:
        _engine = Engine(settings)
    return _engine
