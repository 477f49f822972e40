"""Synthesised call recordings with known turns (espeak-ng voices, ffmpeg for G.711 and resampling).

Used by the demo and by tests: the repository carries no third-party audio of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import ffmpeg
import numpy as np

VOICES = ("en-us+m3", "en-us+f3")

AGENT_CUSTOMER = [
    (0, "Thank you for calling Acme support, my name is Alex. How can I help you today?"),
    (1, "Hi, my internet has been dropping every evening for a week."),
    (0, "I am sorry to hear that. Let me check your line."),
    (1, "Thank you, I work from home so this is really urgent."),
    (0, "I see some errors on your connection. I will send a technician tomorrow morning."),
]


class SynthesisUnavailable(RuntimeError):
    pass


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str, rate: int = 16000) -> np.ndarray:
    """One utterance as float32 mono at `rate`."""
    if not have_espeak():
        raise SynthesisUnavailable("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", str(wav), text], check=True,
                       capture_output=True)
        out, _ = (ffmpeg.input(str(wav)).output("pipe:", format="f32le", ac=1, ar=rate)
                  .global_args("-loglevel", "error").run(capture_stdout=True, capture_stderr=True))
    return np.frombuffer(out, dtype=np.float32)


def conversation(turns, rate: int = 16000, gap_s: float = 0.6) -> np.ndarray:
    """(2, samples): speaker 0 on the left channel, speaker 1 on the right; silence elsewhere."""
    parts = []
    for speaker, text in turns:
        utt = speak(text, VOICES[speaker % len(VOICES)], rate)
        block = np.zeros((2, utt.size + int(gap_s * rate)), dtype=np.float32)
        block[speaker % 2, : utt.size] = utt
        parts.append(block)
    lead = np.zeros((2, int(0.5 * rate)), dtype=np.float32)
    return np.concatenate([lead, *parts], axis=1)


def trimmed(utt: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """An utterance without espeak's leading and trailing near-silence, so that its placement is its speech."""
    loud = np.flatnonzero(np.abs(utt) > floor)
    return utt[loud[0]:loud[-1] + 1] if loud.size else utt[:0]


def placed_call(placements, rate: int = 16000, tail_s: float = 1.0
                ) -> tuple[np.ndarray, list[tuple[int, float, float]]]:
    """A call whose truth is known: each (speaker, start_s, text) is spoken on its speaker's channel starting
    exactly at start_s (turns may overlap: barge-ins; gaps are exact silences). Returns the (2, samples) audio and
    the truth as (speaker, start_s, end_s) of each utterance's speech."""
    utts = [(speaker, start_s, trimmed(speak(text, VOICES[speaker % len(VOICES)], rate)))
            for speaker, start_s, text in placements]
    end = max(int(round(start_s * rate)) + u.size for _, start_s, u in utts)
    audio = np.zeros((2, end + int(tail_s * rate)), dtype=np.float32)
    truth = []
    for speaker, start_s, u in utts:
        at = int(round(start_s * rate))
        audio[speaker % 2, at:at + u.size] += u
        truth.append((speaker, at / rate, (at + u.size) / rate))
    return audio, truth


def write(path: Path, audio: np.ndarray, rate: int, codec: str = "pcm_s16le", fmt: str | None = None) -> Path:
    """Encode (channels, samples) float32 audio at `rate` with ffmpeg (e.g. pcm_mulaw for G.711)."""
    channels = audio.shape[0] if audio.ndim == 2 else 1
    interleaved = (audio.T if audio.ndim == 2 else audio[:, None]).astype(np.float32).tobytes()
    out_args = {"acodec": codec, "ar": rate, "ac": channels}
    if fmt:
        out_args["format"] = fmt
    (ffmpeg.input("pipe:", format="f32le", ar=rate, ac=channels).output(str(path), **out_args)
     .overwrite_output().global_args("-loglevel", "error").run(input=interleaved, capture_stdout=True,
                                                                capture_stderr=True))
    return Path(path)


def stereo_g711_call(path: Path, turns=AGENT_CUSTOMER) -> Path:
    """A stereo 8 kHz mu-law WAV: agent left, customer right."""
    return write(path, conversation(turns, rate=8000), 8000, codec="pcm_mulaw")


def mono_call(path: Path, turns, rate: int = 16000) -> Path:
    audio = conversation(turns, rate=rate).sum(axis=0)
    return write(path, audio[None, :], rate)


def demo_set(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [
        stereo_g711_call(directory / "call-0001-stereo-g711.wav"),
        mono_call(directory / "call-0002-mono-8k.wav",
                  [(0, "Your call is important to us. Please stay on the line."),
                   (1, "I would like to cancel my subscription please.")], rate=8000),
        mono_call(directory / "call-0003-mono-16k.wav",
                  [(1, "Hello, I am calling about my last invoice, it looks too high."),
                   (0, "Let me look at it for you, one moment please.")]),
    ]
