"""The log-mel frontend computes torchaudio's Kaldi fbank with funasr's settings, in runs of frames or whole."""

import pytest
import torch
from torchaudio.compliance import kaldi

from workers.models.fbank import LogMel


def kaldi_fbank(x: torch.Tensor) -> torch.Tensor:
    return kaldi.fbank(x[None], num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0, energy_floor=0.0,
                       window_type="hamming", sample_frequency=16000, snip_edges=True)


@pytest.fixture(scope="module")
def signal():
    g = torch.Generator().manual_seed(7)
    t = torch.arange(16000 * 7) / 16000
    tone = 3000 * torch.sin(2 * torch.pi * 440 * t) * (t % 1 < 0.6)  # speech-like bursts over noise
    return (tone + 200 * torch.randn(t.shape, generator=g)).float()


def test_equals_torchaudio_kaldi_fbank(signal):
    ours = LogMel()(signal)
    ref = kaldi_fbank(signal)
    assert ours.shape == ref.shape == (LogMel().count(signal.numel()), 80)
    assert (ours - ref).abs().max() < 1e-3


@pytest.mark.parametrize("rows", [16, 17, 64, 100, 349, 10_000])
def test_runs_of_frames_give_the_same_bits(signal, rows):
    """Frames go through in runs of `rows` on the CPU (698 frames: the last run takes the remainder); any run
    length gives exactly the whole pass's values."""
    whole = LogMel(rows=1 << 30)(signal)
    assert torch.equal(LogMel(rows=rows)(signal), whole)


def test_runs_are_never_shorter_than_rows():
    with pytest.raises(ValueError):
        LogMel(rows=8)


def test_batched_input_keeps_its_rows_apart(signal):
    both = torch.stack((signal, signal.flip(0)))
    out = LogMel(rows=100)(both)
    assert torch.equal(out[0], LogMel(rows=100)(signal))
    assert torch.equal(out[1], LogMel(rows=100)(signal.flip(0)))
    assert torch.equal(out, LogMel(rows=1 << 30)(both))


@pytest.mark.parametrize("samples", [0, 399, 400, 559, 560])
def test_short_signals_give_whole_frames_only(samples):
    x = torch.ones(samples)
    assert LogMel(rows=16)(x).shape == (LogMel().count(samples), 80)
