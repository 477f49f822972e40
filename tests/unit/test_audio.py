import subprocess

import numpy as np
import pytest

from shared import samples
from shared.audio import AudioError, decode, probe


def _tone(seconds=1.0, rate=8000, channels=2):
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize("codec", ["pcm_mulaw", "pcm_alaw", "pcm_s16le", "pcm_f32le"])
def test_stereo_telephone_wav_keeps_channels_apart(tmp_path, codec):
    audio = _tone()
    audio[1] = 0.0  # right channel silent: a downmix would leak the tone into it
    path = samples.write(tmp_path / "call.wav", audio, 8000, codec=codec)
    info = probe(path)
    assert (info.channels, info.sample_rate, info.codec) == (2, 8000, codec)
    out = decode(path, info.channels)
    assert out.shape == (2, 16000) and out.dtype == np.float32
    assert np.abs(out[0]).max() > 0.2 and np.abs(out[1]).max() < 1e-3


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty file"):
        probe(tmp_path / "e.wav")


def test_random_bytes(tmp_path):
    (tmp_path / "r.wav").write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(AudioError, match="not a readable audio file"):
        probe(tmp_path / "r.wav")


def test_truncated_header(tmp_path):
    path = samples.write(tmp_path / "ok.wav", _tone(), 8000)
    (tmp_path / "t.wav").write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioError):
        info = probe(tmp_path / "t.wav")
        decode(tmp_path / "t.wav", info.channels)


def test_video_without_audio(tmp_path):
    out = tmp_path / "v.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5",
                    "-t", "1", "-pix_fmt", "yuv420p", str(out)], check=True)
    with pytest.raises(AudioError, match="no audio stream"):
        probe(out)
