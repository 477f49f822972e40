"""Hostile and heavy input through the whole pipeline: every file gets a state, the job completes."""

from __future__ import annotations

import io
import subprocess
import wave
import zipfile

import numpy as np
import pytest

from shared import samples

pytestmark = pytest.mark.e2e


def _wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def test_thousand_member_archive(api, tmp_path):
    rng = np.random.default_rng(5)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(1000):  # near-silent and all different: 1,000 files, none a duplicate
            zf.writestr(f"queue/{i // 100:02d}/call-{i:04d}.wav", _wav_bytes(1e-4 * rng.standard_normal(3200), 8000))
    (tmp_path / "many.zip").write_bytes(buf.getvalue())
    job = api.submit([tmp_path / "many.zip"])
    st = api.wait(job["id"], timeout=900)
    assert st["state"] == "done" and st["files_total"] == 1000
    assert st["files_done"] + st["files_failed"] == 1000 and st["files_failed"] == 0


def test_two_hours_of_hold_music(api, tmp_path):
    rate = 8000
    t = np.arange(rate // 2) / rate
    notes = [262, 294, 330, 349, 392, 440, 494, 523]
    bar = np.concatenate([0.2 * (np.sin(2 * np.pi * f * t) + 0.5 * np.sin(2 * np.pi * 1.5 * f * t)) for f in notes])
    music = np.tile(bar, int(2 * 3600 / 4) + 1)[: 2 * 3600 * rate].astype(np.float32)
    path = samples.write(tmp_path / "hold-music.wav", music[None, :], rate, codec="pcm_mulaw")
    job = api.submit([path])
    st = api.wait(job["id"], timeout=900)
    assert st["state"] == "done" and st["files_done"] == 1
    (f,) = api.results(job["id"])["files"]
    assert f["state"] == "done" and abs(f["duration_s"] - 7200) < 1
    assert all(s["state"] == "done" for c in f["channels"] for s in c["segments"])


def test_video_files(api, tmp_path):
    silent_video = tmp_path / "screen.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-t", "1",
                    "-pix_fmt", "yuv420p", str(silent_video)], check=True)
    job = api.submit([silent_video])
    st = api.wait(job["id"])
    assert st["state"] == "failed" and "no audio stream" in st["errors"][0]["error"]


def test_errors_name_the_file_as_submitted(api, tmp_path):
    """No server path in any error (ffmpeg and libsndfile name the spool file they read): uploads, archive members
    and server-side imports alike; a text file is called text, not video."""
    notes = tmp_path / "call-0002.wav"
    notes.write_text("Call 0002, agent Smith, customer 4711, duration 00:05:12, outcome resolved\n" * 40)
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(np.random.default_rng(8).bytes(6000))
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(_wav_bytes(np.zeros(8000), 8000)[:30])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("day3/garbage.m4a", np.random.default_rng(9).bytes(6000))
        zf.write(truncated, "day3/truncated.wav")
    (tmp_path / "day3.zip").write_bytes(buf.getvalue())
    uploaded = api.submit([notes, garbage, truncated, tmp_path / "day3.zip"])
    (api.imports / "imported.ogg").write_bytes(np.random.default_rng(10).bytes(6000))
    r = api.http.post("/v1/jobs/paths", json={"paths": ["imported.ogg"]})
    assert r.status_code == 201, r.text
    server_paths = (str(api.stack.settings.data_dir.resolve()), str(api.stack.settings.spool), str(api.imports))
    errors = {}
    for job_id in (uploaded["id"], r.json()["id"]):
        assert api.wait(job_id)["state"] == "failed"
        for text in (api.http.get(f"/v1/jobs/{job_id}").text, api.http.get(f"/v1/jobs/{job_id}/results").text):
            assert not [p for p in server_paths if p in text], text
        errors.update({e["name"]: e["error"] for e in api.http.get(f"/v1/jobs/{job_id}").json()["errors"]})
    assert set(errors) == {"call-0002.wav", "garbage.mp3", "truncated.wav", "day3.zip/day3/garbage.m4a",
                           "day3.zip/day3/truncated.wav", "imported.ogg"}
    assert errors["call-0002.wav"] == "a text file, not audio"
    assert all(e.startswith(("not a readable audio file", "decode failed")) for n, e in errors.items()
               if n != "call-0002.wav"), errors


def test_hostile_audio_and_archives_end_as_per_file_errors(api, tmp_path):
    """Issue 14 through the whole stack: files that try to make ffmpeg read a server file, a recording with too
    many channels, a header that forges a 1 Hz sample rate, a tar bomb and a member name longer than the database
    column. Each is a per-file error that names it as submitted, the job ends, and the server file is never
    opened."""
    import tarfile

    from tests.unit.ingest.test_decode_hostile import Secret, _hls

    ts = tmp_path / "real.ts"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=3",
                    "-f", "mpegts", str(ts)], check=True)
    secret = Secret(tmp_path / "customer-calls.ts", ts.read_bytes())
    try:
        (tmp_path / "x.wav").write_bytes(_hls(f"file://{secret.path}"))
        (tmp_path / "concat.wav").write_bytes(f"ffconcat version 1.0\nfile '{secret.path}'\n".encode())
        eight = samples.write(tmp_path / "eight.flac", 0.05 * np.ones((8, 8000), np.float32), 8000, codec="flac")
        (tmp_path / "one-hertz.wav").write_bytes(_wav_bytes(np.zeros(8000), 1))  # 8,000 s claimed by 16 KB
        with tarfile.open(tmp_path / "bomb.tar.xz", "w:xz") as tf:
            info = tarfile.TarInfo("zeros.wav")
            info.size = 8 << 20
            tf.addfile(info, io.BytesIO(b"\0" * info.size))
        with tarfile.open(tmp_path / "long.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            for name, data in (("d/" * 400 + "x" * 300 + ".wav", b"RIFF" * 10),
                               ("ok.wav", _wav_bytes(np.zeros(800), 8000))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        job = api.submit([tmp_path / "x.wav", tmp_path / "concat.wav", eight, tmp_path / "bomb.tar.xz",
                          tmp_path / "long.tar", tmp_path / "one-hertz.wav"])
        st = api.wait(job["id"])
    finally:
        read = secret.close()
    assert read == 0, "ffmpeg opened a server file named by an upload"
    assert st["state"] in ("done", "failed")
    errors = {e["name"]: e["error"] for e in st["errors"]}
    assert errors["x.wav"].startswith("not an audio file: ffmpeg sees a playlist (hls)")
    assert errors["concat.wav"].startswith("not an audio file: ffmpeg sees a concat script")
    assert errors["eight.flac"] == "8 channels, over the limit of 4 (SPEECHQ_MAX_CHANNELS)"
    assert errors["one-hertz.wav"].startswith("sample rate 1 Hz, under the lowest of 4000 Hz (SPEECHQ_MIN_SAMPLE_RATE)")
    assert "SPEECHQ_MAX_ARCHIVE_RATIO" in errors["bomb.tar.xz"]
    (long_name,) = [n for n in errors if n.startswith("long.tar/d/")]
    assert "longer than the limit of 1024" in errors[long_name]
    server_paths = (str(api.stack.settings.data_dir.resolve()), str(api.stack.settings.spool), str(tmp_path))
    text = api.http.get(f"/v1/jobs/{job['id']}/results").text + str(st)
    assert not [p for p in server_paths if p in text]
