"""Probe and decode audio: one 16 kHz float32 stream per channel, never downmixed.

libsndfile (soundfile) reads WAV (PCM, float, G.711, GSM 6.10), FLAC, OGG/Opus and MP3 in-process;
everything else (M4A/AAC, raw GSM, AMR, video containers, ...) goes through ffmpeg (ffmpeg-python).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
import soundfile as sf
import soxr

from shared.storage import SAMPLE_RATE

log = logging.getLogger(__name__)


class AudioError(Exception):
    """A file that cannot be used as audio; the message is shown to the user, so it never holds a server path."""


TEXT_PROBE_BYTES = 4096


# libsndfile subtypes under the codec names ffmpeg reports, so that both readers agree.
CODECS = {"ULAW": "pcm_mulaw", "ALAW": "pcm_alaw", "PCM_U8": "pcm_u8", "PCM_S8": "pcm_s8", "PCM_16": "pcm_s16le",
          "PCM_24": "pcm_s24le", "PCM_32": "pcm_s32le", "FLOAT": "pcm_f32le", "DOUBLE": "pcm_f64le",
          "GSM610": "gsm_ms", "VORBIS": "vorbis", "OPUS": "opus", "MPEG_LAYER_III": "mp3"}


@dataclass(frozen=True)
class AudioInfo:
    format: str
    codec: str
    sample_rate: int
    channels: int
    duration_s: float
    reader: str = "ffmpeg"


def probe(path: Path) -> AudioInfo:
    path = Path(path)
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        info = sf.info(str(path))
        if info.channels > 0 and info.samplerate > 0:
            return AudioInfo(format=info.format.lower(), codec=CODECS.get(info.subtype, info.subtype.lower()),
                             sample_rate=int(info.samplerate), channels=int(info.channels),
                             duration_s=float(info.frames) / info.samplerate, reader="soundfile")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        pass  # not for libsndfile: ask ffmpeg
    try:
        info = ffmpeg.probe(str(path))
    except ffmpeg.Error as exc:
        if _is_text(path):
            raise AudioError("a text file, not audio") from None
        raise AudioError(f"not a readable audio file: {_ffmpeg_reason(exc, path)}") from None
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    if not streams:
        if info.get("format", {}).get("format_name") == "tty" or _is_text(path):  # ffmpeg reads text as ANSI art
            raise AudioError("a text file, not audio")
        kinds = sorted({s.get("codec_type", "?") for s in info.get("streams", [])})
        raise AudioError(f"no audio stream (found: {', '.join(kinds) or 'nothing'})")
    stream = streams[0]
    duration = _duration(stream, info.get("format", {}))
    return AudioInfo(
        format=info.get("format", {}).get("format_name", "?"),
        codec=stream.get("codec_name", "?"),
        sample_rate=int(stream.get("sample_rate") or 0),
        channels=int(stream.get("channels") or 0),
        duration_s=duration,
    )


def decode(path: Path, info: AudioInfo) -> np.ndarray:
    """Decode every channel to 16 kHz float32; returns shape (channels, samples). Never downmixes."""
    if info.reader == "soundfile":
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"decode failed: {_without_path(str(exc), path)}") from None
        if data.shape[0] == 0:
            raise AudioError("no audio samples decoded (zero-length audio)")
        if rate != SAMPLE_RATE:
            data = soxr.resample(data, rate, SAMPLE_RATE)
        return np.ascontiguousarray(data.T, dtype=np.float32)
    return np.concatenate(list(_stream_ffmpeg(path, info.channels, 60.0)), axis=1)


def stream(path: Path, info: AudioInfo, block_seconds: float = 60.0):
    """Decode in blocks of (channels, ~block_seconds * 16000) float32 at 16 kHz: memory stays flat
    whatever the recording's length. Never downmixes."""
    if info.reader == "soundfile":
        yield from _stream_soundfile(path, info, block_seconds)
    else:
        yield from _stream_ffmpeg(path, info.channels, block_seconds)


def _stream_soundfile(path: Path, info: AudioInfo, block_seconds: float):
    resampler = (soxr.ResampleStream(info.sample_rate, SAMPLE_RATE, info.channels, dtype="float32")
                 if info.sample_rate != SAMPLE_RATE else None)
    frames = max(1, int(block_seconds * info.sample_rate))
    seen = 0
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                block = f.read(frames, dtype="float32", always_2d=True)
                last = block.shape[0] < frames
                seen += block.shape[0]
                if resampler is not None:
                    block = resampler.resample_chunk(block, last=last)
                if block.shape[0]:
                    yield np.ascontiguousarray(block.T)
                if last:
                    break
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"decode failed: {_without_path(str(exc), path)}") from None
    if seen == 0:
        raise AudioError("no audio samples decoded (zero-length audio)")


def _stream_ffmpeg(path: Path, channels: int, block_seconds: float):
    proc = (
        ffmpeg.input(str(path))
        .output("pipe:", format="f32le", acodec="pcm_f32le", ar=SAMPLE_RATE, ac=channels, map="0:a:0")
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .run_async(pipe_stdout=True, pipe_stderr=True)
    )
    size = int(block_seconds * SAMPLE_RATE) * channels * 4
    seen = 0
    try:
        while chunk := proc.stdout.read(size):
            usable = len(chunk) - len(chunk) % (4 * channels)
            seen += usable
            if usable:
                yield np.frombuffer(chunk[:usable], dtype=np.float32).reshape(-1, channels).T.copy()
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        reason = _without_path(err[-1], path)[:300] if err else f"ffmpeg exited with {code}"
        raise AudioError(f"decode failed: {reason}")
    if seen == 0:
        raise AudioError("no audio samples decoded (zero-length audio)")


def _duration(stream: dict, fmt: dict) -> float:
    for value in (stream.get("duration"), fmt.get("duration")):
        try:
            if value is not None and float(value) >= 0:
                return float(value)
        except ValueError:
            continue
    return 0.0


def _ffmpeg_reason(exc: ffmpeg.Error, path: Path) -> str:
    text = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
    return _without_path(text[-1], path)[:300] if text else "ffmpeg failed"


def _without_path(message: str, path: Path) -> str:
    """ffmpeg and libsndfile name the file they read; on a server that is a spool path, not the user's name."""
    where = str(path)
    message = message.replace(f"'{where}'", "the file").replace(f"{where}: ", "")
    return message.replace(where, "the file")


def _is_text(path: Path) -> bool:
    """True for notes, CSV, JSON and the like: the head is UTF-8 without control characters other than spacing."""
    with open(path, "rb") as f:
        head = f.read(TEXT_PROBE_BYTES)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the head
            return False
        text = head[:exc.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c in "\t\r\n\f" for c in text)
