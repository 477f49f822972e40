import subprocess

import numpy as np
import pytest

from shared import samples
from shared.formats import sidecar
from workers.ingest.decode import AudioError, decode, probe, stream

# (file name, ffmpeg encoder, sample rate, channels, reader expected)
FORMATS = [
    ("u8.wav", "pcm_u8", 8000, 2, "soundfile"),
    ("s16.wav", "pcm_s16le", 16000, 2, "soundfile"),
    ("s24.wav", "pcm_s24le", 44100, 2, "soundfile"),
    ("s32.wav", "pcm_s32le", 48000, 2, "soundfile"),
    ("f32.wav", "pcm_f32le", 22050, 2, "soundfile"),
    ("mulaw.wav", "pcm_mulaw", 8000, 2, "soundfile"),
    ("alaw.wav", "pcm_alaw", 8000, 2, "soundfile"),
    ("call.flac", "flac", 44100, 2, "soundfile"),
    ("call.ogg", "libopus", 48000, 2, "soundfile"),
    ("call.mp3", "libmp3lame", 44100, 2, "soundfile"),
    ("call.m4a", "aac", 44100, 2, "ffmpeg"),
    ("call.gsm", "libgsm", 8000, 1, "soundfile"),
    ("call.amr", "libopencore_amrnb", 8000, 1, "ffmpeg"),
]


def _tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    audio = np.zeros((channels, t.size), dtype=np.float32)
    audio[0] = 0.3 * np.sin(2 * np.pi * 440 * t)  # only the first channel carries sound
    return audio


@pytest.mark.parametrize("name,codec,rate,channels,reader", FORMATS, ids=[f[0] for f in FORMATS])
def test_formats_decode_per_channel_to_16k(tmp_path, name, codec, rate, channels, reader):
    path = tmp_path / name
    try:
        samples.write(path, _tone(2.0, rate, channels), rate, codec=codec)
    except Exception as exc:  # noqa: BLE001 - this ffmpeg build lacks the encoder
        if "Unknown encoder" in str(getattr(exc, "stderr", b"")) or "Unknown encoder" in str(exc):
            pytest.skip(f"this ffmpeg has no {codec} encoder")
        raise
    info = probe(path)
    assert (info.channels, info.reader) == (channels, reader)
    out = decode(path, info)
    assert out.shape[0] == channels and out.dtype == np.float32
    assert abs(out.shape[1] / 16000 - 2.0) < 0.15
    assert np.abs(out[0]).max() > 0.1
    if channels == 2:  # no downmix: the silent channel stays silent
        assert np.abs(out[1]).max() < 0.02
    streamed = np.concatenate(list(stream(path, info, block_seconds=0.3)), axis=1)  # what ingest uses
    n = min(streamed.shape[1], out.shape[1])
    assert abs(streamed.shape[1] - out.shape[1]) <= 64 and np.abs(streamed[:, :n] - out[:, :n]).max() < 2e-2


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty file"):
        probe(tmp_path / "e.wav")


def test_zero_length_audio(tmp_path):
    path = samples.write(tmp_path / "z.wav", np.zeros((1, 0), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="zero-length"):
        decode(path, probe(path))


def test_random_bytes(tmp_path):
    (tmp_path / "r.wav").write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(AudioError, match="not a readable audio file"):
        probe(tmp_path / "r.wav")


def test_truncated_header(tmp_path):
    path = samples.write(tmp_path / "ok.wav", _tone(1.0, 8000, 2), 8000)
    (tmp_path / "t.wav").write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioError):
        decode(tmp_path / "t.wav", probe(tmp_path / "t.wav"))


@pytest.mark.parametrize("codec", ["pcm_s16le", "pcm_mulaw"])
def test_a_wav_cut_short_is_read_with_a_note(tmp_path, codec):
    """A WAV whose data stops before its header says (an upload or copy that broke off) is read as far as
    it goes, and the file keeps a note saying how much is missing; an intact file has no note."""
    path = samples.write(tmp_path / "ok.wav", _tone(10.0, 8000, 2), 8000, codec=codec)
    assert probe(path).note is None
    data = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    info = probe(cut)
    assert 4.5 < info.duration_s < 5.5
    assert info.note == (f"truncated file: its header declares 10.0 s of audio, it holds {info.duration_s:.1f} s; "
                         "that part was processed")
    assert decode(cut, info).shape[1] == pytest.approx(info.duration_s * 16000, abs=2)


def test_video_without_audio(tmp_path):
    out = tmp_path / "v.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5",
                    "-t", "1", "-pix_fmt", "yuv420p", str(out)], check=True)
    with pytest.raises(AudioError, match="no audio stream"):
        probe(out)


def test_video_with_audio_track(tmp_path):
    out = tmp_path / "meeting.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5",
                    "-f", "lavfi", "-i", "sine=frequency=300:duration=1", "-t", "1", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", str(out)], check=True)
    info = probe(out)
    assert info.reader == "ffmpeg" and info.channels == 1
    assert decode(out, info).shape[0] == 1


@pytest.mark.parametrize("name", ["notes.txt", "calls.csv", "meta.json"])
def test_text_is_not_called_video(tmp_path, name):
    """ffmpeg reads a long .txt as ANSI art (a video stream) and a .csv not at all: both are text."""
    path = tmp_path / name
    path.write_text("Call 0001, agent Smith, customer 4711, duration 00:05:12, outcome resolved\n" * 40)
    with pytest.raises(AudioError) as exc:
        probe(path)
    assert str(exc.value) == "a text file, not audio"


@pytest.mark.parametrize(("name", "reason"), [
    ("day1/notes.txt", "sidecar file (.txt), not audio"),
    ("index.CSV", "sidecar file (.csv), not audio"),
    ("meta/call-0001.json", "sidecar file (.json), not audio"),
    ("call-0001.xml", "sidecar file (.xml), not audio"),
    ("__MACOSX/day1/._call.wav", "macOS metadata (resource fork), not audio"),
    ("day1/.DS_Store", "file-system metadata, not audio"),
    ("day1\\Thumbs.db", "file-system metadata, not audio"),
    ("day1/call.wav", None),
    ("call.txt.wav", None),
    ("recording", None),
])
def test_sidecar_names(name, reason):
    assert sidecar(name) == reason


def test_errors_never_name_the_server_path(tmp_path):
    spool = tmp_path / "spool" / "uploads" / "job"
    spool.mkdir(parents=True)
    cases = {"garbage.wav": np.random.default_rng(2).bytes(5000),
             "header-only.mp3": b"ID3\x04\0\0\0\0\0\x10" + b"\xff" * 40}
    ok = samples.write(tmp_path / "ok.wav", _tone(1.0, 8000, 1), 8000).read_bytes()
    cases["truncated.wav"] = ok[:60]
    for name, data in cases.items():
        path = spool / f"0a1b-{name}"
        path.write_bytes(data)
        with pytest.raises(AudioError) as exc:
            decode(path, probe(path))
        assert str(tmp_path) not in str(exc.value) and "0a1b" not in str(exc.value), str(exc.value)
