"""A redacted copy of a recording: each redacted span replaced, on its own channel, by a tone or silence.

ffmpeg reads the original (any format speechq accepts), keeps its sample rate and channels, and writes 16-bit
PCM WAV; the spans are one `aeval` expression per channel, so the audio streams through and memory stays flat.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

TONE_HZ = 1000.0
TONE_LEVEL = 0.1  # -20 dBFS


class AudioUnavailable(RuntimeError):
    pass


def _expression(spans: list[tuple[float, float]], fill: str) -> str:
    if not spans:
        return "val(ch)"
    inside = "+".join(f"between(t,{s:.3f},{e:.3f})" for s, e in spans)
    replacement = f"{TONE_LEVEL}*sin(2*PI*{TONE_HZ}*t)" if fill == "tone" else "0"
    return f"if(gt({inside},0),{replacement},val(ch))"


def filter_for(spans: list[tuple[int, float, float]], channels: int, fill: str = "tone") -> str:
    """The aeval filter: `spans` are (channel index, start_s, end_s)."""
    exprs = [_expression([(s, e) for c, s, e in spans if c == ch], fill).replace("val(ch)", f"val({ch})")
             for ch in range(channels)]
    return "aeval=exprs='" + "|".join(exprs) + "':c=same"


def write_redacted(source: Path, out: Path, spans: list[tuple[int, float, float]], channels: int,
                   fill: str = "tone") -> Path:
    """Write `source` with `spans` (channel, start_s, end_s) replaced to `out` (WAV)."""
    if not source.is_file():
        raise AudioUnavailable("the recording is no longer kept (uploads leave the spool when their job ends)")
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-map", "0:a:0",
           "-af", filter_for(spans, channels, fill), "-c:a", "pcm_s16le", "-f", "wav", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AudioUnavailable(f"ffmpeg could not write the redacted audio: {done.stderr.strip()[-500:]}")
    return out
