"""The FSMN-VAD network on a GPU (SPEECHQ_VAD_DEVICE=cuda): the bf16 pass there, the recheck on the CPU,
and the segments equal to the CPU's fp32 ones."""

import numpy as np
import pytest
import torch

from bench.common import utterances
from shared.config import Settings
from workers.ingest.vad import Detector, resolve_precision
from workers.ingest.vad.scorer import StreamState

DIRECTORY = Settings().vad_model_dir


def test_a_gpu_always_runs_the_checked_pass():
    assert resolve_precision("fp32", "cuda") == "mixed"
    assert resolve_precision("auto", "cuda") == "mixed"
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_an_unchecked_pass_is_refused_off_the_cpu():
    with pytest.raises(ValueError, match="checked bf16"):
        Detector(DIRECTORY, "fp32", device="meta")
    with pytest.raises(ValueError, match="checked bf16"):
        Detector(DIRECTORY, "bf16", device="meta")


def _calls(n: int, seed: int) -> list[np.ndarray]:
    """Channels of speech-like bursts with pauses of 0.2-3 s between them, 40-120 s each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        parts = []
        for utt in utterances(int(rng.integers(4, 12)), seed=seed * 100 + i, low=1.0, high=8.0):
            parts += [utt, np.zeros(int(rng.uniform(0.2, 3.0) * 16000), np.float32)]
        out.append(np.concatenate(parts))
    return out


@pytest.mark.gpu
def test_segments_on_the_gpu_equal_the_cpu_fp32_ones():
    streams = _calls(12, seed=7)
    cpu = Detector(DIRECTORY, "fp32").run([[s] for s in streams])
    det = Detector(DIRECTORY, "mixed", block_samples=16000 * 20, device="cuda")
    gpu = det.run([[s] for s in streams])
    assert sum(map(len, cpu)) > 12 and gpu == cpu
    assert det.scorer.rechecked > 0  # frames near the threshold were recomputed in fp32 on the CPU


@pytest.mark.gpu
def test_gpu_posteriors_stay_inside_the_margin():
    audio = _calls(1, seed=3)[0]
    exact, fast = Detector(DIRECTORY, "fp32"), Detector(DIRECTORY, "mixed", device="cuda")
    fast.scorer.pivot = None  # the raw bf16 pass on the GPU, no recheck
    a, b = StreamState(), StreamState()
    pa = exact.scorer.silence([a], [exact.scorer.features(a, audio, True)])[0]
    pb = fast.scorer.silence([b], [fast.scorer.features(b, audio, True)])[0]
    assert torch.cuda.is_available() and np.abs(pa - pb).max() < fast.scorer.margin / 2


def test_the_ingest_pool_sees_the_first_gpu_only_when_asked(monkeypatch):
    from api import launcher

    monkeypatch.setattr(launcher, "count_devices", lambda: 4)
    monkeypatch.setattr(launcher, "get_settings", lambda: Settings(_env_file=None, vad_device="cuda", gpu_devices="2,3"))
    assert launcher.ingest_worker(2).env["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.setattr(launcher, "get_settings", lambda: Settings(_env_file=None, vad_device="cuda"))
    assert launcher.ingest_worker(2).env["CUDA_VISIBLE_DEVICES"] == "0"
    monkeypatch.setattr(launcher, "get_settings", lambda: Settings(_env_file=None))
    assert launcher.ingest_worker(2).env["CUDA_VISIBLE_DEVICES"] == ""
