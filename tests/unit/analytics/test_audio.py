"""Redacted audio (ffmpeg) and segment loudness (pyloudnorm) on generated signals whose levels are known."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from shared.analytics import audio
from shared.analytics.loudness import lufs, rms_dbfs, segment_levels

RATE = 8000


@pytest.fixture
def stereo(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    t = np.arange(RATE * 4) / RATE
    x = np.stack([0.5 * np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 500 * t)], axis=1)
    path = tmp_path / "call.wav"
    sf.write(path, x, RATE, subtype="PCM_16")
    return path


def _peak(y, ch, a, b):
    return np.abs(y[int(a * RATE):int(b * RATE), ch]).max()


def test_spans_are_silenced_on_their_own_channel(stereo, tmp_path):
    out = audio.write_redacted(stereo, tmp_path / "out.wav", [(0, 1.0, 2.0), (1, 3.0, 3.5)], 2, "silence")
    y, rate = sf.read(out)
    assert rate == RATE and y.shape == (RATE * 4, 2)
    assert _peak(y, 0, 1.05, 1.95) == 0 and _peak(y, 1, 3.05, 3.45) == 0
    assert _peak(y, 1, 1.05, 1.95) == pytest.approx(0.5, abs=0.01)  # the other channel goes on
    assert _peak(y, 0, 2.05, 2.95) == pytest.approx(0.5, abs=0.01)


def test_spans_are_replaced_by_a_tone(stereo, tmp_path):
    y, _ = sf.read(audio.write_redacted(stereo, tmp_path / "out.wav", [(0, 1.0, 2.0)], 2, "tone"))
    assert _peak(y, 0, 1.05, 1.95) == pytest.approx(audio.TONE_LEVEL, abs=0.005)


def test_a_recording_no_longer_kept(tmp_path):
    with pytest.raises(audio.AudioUnavailable, match="no longer kept"):
        audio.write_redacted(tmp_path / "gone.wav", tmp_path / "out.wav", [], 2)


def test_levels_of_a_known_sine():
    t = np.arange(16000 * 3) / 16000
    sine = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    assert rms_dbfs(sine) == pytest.approx(-23.01, abs=0.02)  # 0.1 peak: 20*log10(0.1/sqrt(2))
    assert lufs(sine) == pytest.approx(-23.0, abs=0.3)  # BS.1770 reads a 1 kHz sine near its dBFS RMS (mono)
    samples = np.concatenate([np.zeros(16000, np.float32), sine])
    levels = segment_levels(samples, [(0, 1000), (1000, 3000), (1000, 1200)])
    assert levels[0] == (None, None)  # silence
    assert levels[1][0] == pytest.approx(-23.0, abs=0.3)
    assert levels[2][0] is None and levels[2][1] == pytest.approx(-23.0, abs=0.1)  # under 0.4 s: dBFS only


def test_lufs_equals_pyloudnorm():
    import pyloudnorm

    rng = np.random.default_rng(1)
    meter = pyloudnorm.Meter(16000)
    for n in (6400, 6401, 16000 * 3 + 17, 16000 * 12 + 1234):
        envelope = np.repeat(rng.uniform(0, 1, n // 800 + 1) ** 3, 800)[:n]  # speech-like: loud and quiet stretches
        x = (rng.standard_normal(n) * 0.2 * envelope).astype(np.float32)
        assert lufs(x) == pytest.approx(meter.integrated_loudness(x.astype(np.float64)), abs=0.01)
