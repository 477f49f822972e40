"""SRT and WebVTT of one call: every channel's turns in one timeline, each cue labelled with its speaker.

Rows arrive in time order (rows.py); a segment without text (not yet recognised, or silence) gets no cue.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from html import escape


def timestamp(seconds: float, decimal: str) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def _cues(rows: Iterable[dict]) -> Iterator[tuple[dict, str]]:
    for r in rows:
        text = (r.get("text") or "").strip()
        if text:
            yield r, text


def srt(rows: Iterable[dict]) -> Iterator[bytes]:
    for n, (r, text) in enumerate(_cues(rows), start=1):
        yield (f"{n}\n{timestamp(r['start_s'], ',')} --> {timestamp(r['end_s'], ',')}\n"
               f"[{r['channel']}] {text}\n\n").encode()


def vtt(rows: Iterable[dict]) -> Iterator[bytes]:
    """WebVTT with the speaker as a voice span (<v agent>), which players show as the speaker's name."""
    yield b"WEBVTT\n\n"
    for r, text in _cues(rows):
        yield (f"{timestamp(r['start_s'], '.')} --> {timestamp(r['end_s'], '.')}\n"
               f"<v {escape(r['channel'], quote=False)}>{escape(text, quote=False)}\n\n").encode()
