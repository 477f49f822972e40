"""Uploads that try to make ffmpeg read something other than themselves (issue 14): playlists, concat scripts,
URLs, subtitles, attachments, images. Each is a clear AudioError, and nothing outside the upload is opened:
the files they point at are FIFOs that record whether anyone opened them."""

from __future__ import annotations

import dataclasses
import http.server
import os
import subprocess
import threading

import numpy as np
import pytest

from shared import samples
from workers.ingest.decode import AudioError, probe, stream


class Secret:
    """A server file an attacker names: a FIFO holding real MPEG-TS audio. `bytes_read` counts what any reader
    took from it; a reader that never opens it leaves it at 0."""

    def __init__(self, path, payload: bytes):
        self.path, self.payload = path, payload
        os.mkfifo(path)
        self.bytes_read = 0
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the FIFO
        self.opened.set()
        try:
            self.bytes_read = os.write(fd, self.payload)
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    def close(self) -> int:
        if not self.opened.is_set():  # release the writer: open the read end ourselves, read nothing
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self.thread.join(5)
            os.close(fd)
            return 0
        self.thread.join(5)
        return self.bytes_read


@pytest.fixture
def secret(tmp_path):
    ts = tmp_path / "real.ts"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=3",
                    "-f", "mpegts", str(ts)], check=True)
    s = Secret(tmp_path / "customer-calls.ts", ts.read_bytes())
    yield s
    s.close()


def _hls(target: str) -> bytes:
    return f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n".encode()


def test_the_watch_sees_an_unrestricted_ffprobe(tmp_path, secret):
    """The detector itself: plain ffprobe (what speechq ran before) follows the playlist into the server's file."""
    (tmp_path / "x.wav").write_bytes(_hls(f"file://{secret.path}"))
    subprocess.run(["ffprobe", "-loglevel", "quiet", str(tmp_path / "x.wav")], timeout=60)
    assert secret.close() > 0


@pytest.mark.parametrize("target", ["file://{secret}", "{secret}", "file:{secret}"])
def test_hls_playlist_uploaded_as_wav(tmp_path, secret, target):
    (tmp_path / "x.wav").write_bytes(_hls(target.format(secret=secret.path)))
    with pytest.raises(AudioError) as exc:
        probe(tmp_path / "x.wav")
    assert str(exc.value) == "not an audio file: ffmpeg sees a playlist (hls); only audio containers are read"
    assert secret.close() == 0


def test_concat_script(tmp_path, secret):
    (tmp_path / "x.wav").write_bytes(f"ffconcat version 1.0\nfile '{secret.path}'\n".encode())
    with pytest.raises(AudioError, match=r"a concat script \(concat\)"):
        probe(tmp_path / "x.wav")
    assert secret.close() == 0


def test_http_url_in_a_playlist(tmp_path):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "x.m4a").write_bytes(_hls(f"http://127.0.0.1:{server.server_port}/secret.ts"))
        with pytest.raises(AudioError, match="playlist"):
            probe(tmp_path / "x.m4a")
    finally:
        server.shutdown()
    assert hits == []


def test_decoding_refuses_a_forged_probe(tmp_path, secret):
    """Even with a probe result that names a playlist demuxer, the decoder opens nothing but the upload."""
    (tmp_path / "x.wav").write_bytes(_hls(f"file://{secret.path}"))
    forged = probe_like(format="hls")
    with pytest.raises(AudioError, match="decode failed"):
        list(stream(tmp_path / "x.wav", forged))
    assert secret.close() == 0


def probe_like(**changes):
    from workers.ingest.decode import AudioInfo

    return dataclasses.replace(AudioInfo(format="mov", codec="aac", sample_rate=16000, channels=1, duration_s=1.0),
                               **changes)


def test_subtitles_uploaded_as_audio(tmp_path):
    (tmp_path / "x.wav").write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n\n2\n00:00:03,000 --> "
                                    "00:00:04,000\nworld\n\n", encoding="utf-8")
    with pytest.raises(AudioError) as exc:
        probe(tmp_path / "x.wav")
    assert str(exc.value) in ("a text file, not audio",
                              "not an audio file: ffmpeg sees subtitles (srt); only audio containers are read")


def _mkv(tmp_path, name: str, with_audio: bool):
    srt = tmp_path / "s.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhi\n", encoding="utf-8")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"\x7fELF" + b"\0" * 64)
    cmd = ["ffmpeg", "-loglevel", "error"]
    if with_audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=300:duration=1"]
    cmd += ["-i", str(srt), "-attach", str(payload), "-metadata:s:t", "mimetype=application/octet-stream"]
    cmd += ["-c:s", "srt"] + (["-c:a", "libopus"] if with_audio else []) + [str(tmp_path / name)]
    subprocess.run(cmd, check=True)
    return tmp_path / name


def test_matroska_with_only_subtitles_and_an_attachment(tmp_path):
    with pytest.raises(AudioError, match=r"no audio stream \(found: attachment, subtitle\)"):
        probe(_mkv(tmp_path, "call.mka", with_audio=False))


def test_matroska_with_audio_subtitles_and_an_attachment_decodes_the_audio_only(tmp_path):
    path = _mkv(tmp_path, "call.mkv", with_audio=True)
    info = probe(path)
    assert info.channels == 1
    audio = np.concatenate(list(stream(path, info)), axis=1)
    assert audio.shape[0] == 1 and abs(audio.shape[1] / 16000 - 1.0) < 0.1


def test_image_uploaded_as_audio(tmp_path):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=32x32", "-frames:v", "1",
                    "-f", "image2", "-c:v", "png", str(tmp_path / "x.png")], check=True)
    os.rename(tmp_path / "x.png", tmp_path / "x.wav")
    with pytest.raises(AudioError, match=r"an image \(png_pipe\)"):
        probe(tmp_path / "x.wav")


def test_a_name_that_looks_like_a_protocol_is_just_a_file(tmp_path):
    """`concat:...` or `http:...` as a file name is never read as a URL."""
    path = samples.write(tmp_path / "ok.m4a", 0.3 * np.ones((1, 8000), dtype=np.float32), 8000, codec="aac")
    weird = tmp_path / "concat:ok.m4a|http:x.m4a"
    os.rename(path, weird)
    info = probe(weird)
    assert info.reader == "ffmpeg" and np.concatenate(list(stream(weird, info)), axis=1).shape[0] == 1


@pytest.mark.parametrize("codec", ["flac", "aac"])
def test_decoded_audio_stops_at_the_budget(tmp_path, codec):
    """The budget holds while decoding, even when the header understates the length (here forged to 0 s)."""
    rate = 8000
    name = "c.flac" if codec == "flac" else "c.m4a"
    path = samples.write(tmp_path / name, 0.1 * np.ones((4, rate * 4), dtype=np.float32), rate, codec=codec)
    info = probe(path)
    budget = 4 * 16000 * 4 * 2  # 2 s of 4 channels
    with pytest.raises(AudioError, match="would take"):
        list(stream(path, info, block_seconds=0.5, max_bytes=budget))
    with pytest.raises(AudioError, match=r"decoded audio passed .*\(SPEECHQ_MAX_FILE_SPOOL_BYTES"):
        list(stream(path, dataclasses.replace(info, duration_s=0.0), block_seconds=0.5, max_bytes=budget))
    assert sum(b.nbytes for b in stream(path, info, block_seconds=0.5, max_bytes=budget * 3)) > budget
