"""Probe and decode audio: one 16 kHz float32 stream per channel, never downmixed.

libsndfile (soundfile) reads WAV (PCM, float, G.711, GSM 6.10), FLAC, OGG/Opus and MP3 in-process;
everything else (M4A/AAC, raw GSM, AMR, video containers, ...) goes through ffmpeg (ffmpeg-python).

ffmpeg reads only the file it is given: its protocols are limited to `file` (no http, no pipes, no
crypto or concat URLs) and its demuxers to audio and audio/video containers (DEMUXERS). Playlists
(HLS, DASH), concat scripts, image sequences, subtitles and text are refused before a byte of anything
they name is opened.
"""

from __future__ import annotations

import logging
import re
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

# Demuxers that read one self-contained audio (or audio/video) file and never open another file or URL.
# Not here on purpose: hls, dash, webm_dash_manifest (playlists), concat, image2 and the *_pipe image
# demuxers, subtitle and text demuxers (srt, ass, webvtt, tty, ...), lavfi, devices, raw PCM (no header).
DEMUXERS = (
    "aac", "ac3", "aiff", "amr", "amrnb", "amrwb", "ape", "asf", "au", "avi", "caf", "dsf", "dts", "dtshd", "eac3",
    "flac", "flv", "g722", "g723_1", "g726", "g726le", "g729", "gsm", "ilbc", "ircam", "loas", "matroska", "mlp",
    "mmf", "mov", "mp3", "mpc", "mpc8", "mpeg", "mpegts", "nistsphere", "ogg", "oma", "qcp", "rm", "shn", "sox",
    "tak", "truehd", "tta", "voc", "w64", "wav", "wv", "xwma",
)
# Input options of every ffmpeg and ffprobe run: the upload's bytes and nothing else.
INPUT_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(DEMUXERS)}
REFUSED_KINDS = {"hls": "a playlist", "dash": "a playlist", "webm_dash_manifest": "a playlist",
                 "concat": "a concat script", "image2": "an image sequence", "tty": "text"}
SUBTITLES = {"srt", "ass", "webvtt", "microdvd", "subviewer", "subviewer1", "sami", "jacosub", "mpl2", "mpsub",
             "pjs", "realtext", "stl", "vplayer", "aqtitle", "lrc", "scc", "mcc", "vobsub", "sup", "dvbsub",
             "dvbtxt", "tedcaptions"}


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
    note: str | None = None  # kept with the file's results when it is usable but damaged (a truncated WAV)


# libsndfile's log of a WAV whose data chunk is cut short: "data : 320000 (should be 159978)"
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_BYTE_RATE = re.compile(r"^\s*Bytes/sec\s*:\s*(\d+)", re.MULTILINE)


def truncation(extra_info: str, duration_s: float) -> str | None:
    """The note for a file whose header declares more audio than it holds, from libsndfile's log."""
    short, rate = _SHORT_DATA.search(extra_info), _BYTE_RATE.search(extra_info)
    if not short or int(short[2]) >= int(short[1]):
        return None
    declared = f"{int(short[1]) / int(rate[1]):.1f} s" if rate and int(rate[1]) else f"{int(short[1])} bytes"
    return (f"truncated file: its header declares {declared} of audio, it holds {duration_s:.1f} s; "
            "that part was processed")


def probe(path: Path) -> AudioInfo:
    path = Path(path)
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        info = sf.info(str(path))
        if info.channels > 0 and info.samplerate > 0:
            seconds = float(info.frames) / info.samplerate
            return AudioInfo(format=info.format.lower(), codec=CODECS.get(info.subtype, info.subtype.lower()),
                             sample_rate=int(info.samplerate), channels=int(info.channels), duration_s=seconds,
                             reader="soundfile", note=truncation(info.extra_info or "", seconds))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        pass  # not for libsndfile: ask ffmpeg
    try:
        info = ffmpeg.probe(_url(path), **INPUT_OPTIONS)
    except ffmpeg.Error as exc:
        refused = _refused_format(exc)
        if refused and not refused.startswith("text"):  # a playlist or script is text too: say what it is
            raise AudioError(f"not an audio file: ffmpeg sees {refused}; only audio containers are read") from None
        if refused or _is_text(path):
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
    return np.concatenate(list(_stream_ffmpeg(path, info, 60.0)), axis=1)


def stream(path: Path, info: AudioInfo, block_seconds: float = 60.0, max_bytes: int | None = None):
    """Decode in blocks of (channels, ~block_seconds * 16000) float32 at 16 kHz: memory stays flat
    whatever the recording's length. Never downmixes. With `max_bytes`, decoding stops with an AudioError
    as soon as the decoded float32 audio (all channels) would pass it, whatever the header claimed."""
    blocks = (_stream_soundfile(path, info, block_seconds) if info.reader == "soundfile"
              else _stream_ffmpeg(path, info, block_seconds))
    if max_bytes is None:
        yield from blocks
        return
    expected = int(info.duration_s * SAMPLE_RATE) * info.channels * 4
    if expected > max_bytes:
        raise AudioError(too_big(expected, max_bytes))
    written = 0
    try:
        for block in blocks:
            written += block.nbytes
            if written > max_bytes:
                raise AudioError(too_big(written, max_bytes, decoded=True))
            yield block
    finally:
        blocks.close()  # stops ffmpeg at once when the budget ends the decoding


def too_big(size: int, budget: int, decoded: bool = False) -> str:
    what = "decoded audio passed" if decoded else "decoded audio would take"
    return (f"{what} {_mib(size)} of spool (16 kHz float32, every channel), over this file's budget of "
            f"{_mib(budget)} (SPEECHQ_MAX_FILE_SPOOL_BYTES, SPEECHQ_MAX_JOB_SPOOL_BYTES)")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MiB"


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


def _stream_ffmpeg(path: Path, info: AudioInfo, block_seconds: float):
    channels = info.channels
    demuxer = info.format.split(",")[0]  # the one probe found (and allowed): no second guess on the same bytes
    proc = (
        ffmpeg.input(_url(path), f=demuxer, **INPUT_OPTIONS)
        .output("pipe:", format="f32le", acodec="pcm_f32le", ar=SAMPLE_RATE, ac=channels, map="0:a:0")
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .run_async(pipe_stdout=True, pipe_stderr=True)
    )
    size = int(block_seconds * SAMPLE_RATE) * channels * 4
    seen, finished = 0, False
    try:
        while chunk := proc.stdout.read(size):
            usable = len(chunk) - len(chunk) % (4 * channels)
            seen += usable
            if usable:
                yield np.frombuffer(chunk[:usable], dtype=np.float32).reshape(-1, channels).T.copy()
        finished = True
    finally:
        if not finished:  # the caller stopped early (a budget, an error): ffmpeg need not finish
            proc.kill()
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


def _url(path: Path) -> str:
    """An explicit file: URL, so that no name (`concat:...`, `http:...`) is ever read as another protocol."""
    return f"file:{Path(path).resolve()}"


def _refused_format(exc: ffmpeg.Error) -> str | None:
    """What ffmpeg took the bytes for, when that format is not on the allowlist ('[hls @ 0x...] Format not on
    whitelist ...'); None for any other error."""
    text = (exc.stderr or b"").decode("utf-8", "replace")
    match = re.search(r"\[([\w,]+) @ [^\]]*\] Format not on whitelist", text)
    if not match:
        return None
    name = match.group(1)
    if name.endswith("_pipe") or name in ("image2", "image2pipe", "gif", "apng"):
        kind = "an image"
    elif name in SUBTITLES:
        kind = "subtitles"
    else:
        kind = REFUSED_KINDS.get(name, "a format that is not audio")
    return f"{kind} ({name})"


def _ffmpeg_reason(exc: ffmpeg.Error, path: Path) -> str:
    text = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
    return _without_path(text[-1], path)[:300] if text else "ffmpeg failed"


def _without_path(message: str, path: Path) -> str:
    """ffmpeg and libsndfile name the file they read; on a server that is a spool path, not the user's name."""
    where = str(path)
    message = message.replace(f"file:{Path(path).resolve()}", where).replace(f"file:{where}", where)
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
