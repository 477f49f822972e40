"""Shared pieces of the benchmarks: test audio, timing, the results table and JSON records."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np


def commit() -> str:
    """The commit measured: bench/COMMIT when present (written before a device run, whose copy of the
    tree may carry a stale .git), else git's HEAD."""
    stamp = Path(__file__).resolve().parent / "COMMIT"
    if stamp.exists():
        return stamp.read_text().strip()
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.SubprocessError, FileNotFoundError):
        return "unknown"


def utterances(n: int, seed: int = 0, low: float = 3.0, high: float = 15.0, rate: int = 16000) -> list[np.ndarray]:
    """Speech-like noise (band-limited, syllable-rate envelope), lengths uniform in [low, high] s."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.uniform(low, high) * rate)
        noise = rng.standard_normal(length).astype(np.float32)
        kernel = np.hanning(9).astype(np.float32)
        voiced = np.convolve(noise, kernel / kernel.sum(), mode="same")
        t = np.arange(length) / rate
        envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.28)))
        out.append((0.1 * voiced * envelope).astype(np.float32))
    return out


@dataclass
class Record:
    system: str
    model: str
    audio_seconds: float
    wall_seconds: float
    x_realtime: float
    peak_gpu_mem_gb: float
    ratio_to_automodel: float | None = None
    arithmetic_fraction: float | None = None
    notes: str = ""
    date: str = field(default_factory=lambda: date.today().isoformat())
    gpu: str = ""
    commit: str = field(default_factory=commit)
    host: str = field(default_factory=platform.node)


def timed(fn, sync=None) -> float:
    if sync:
        sync()
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - start


def table(records: list[Record]) -> str:
    head = "| system | model | audio s | wall s | × real time | vs AutoModel | peak GPU GiB | % of arithmetic limit | notes |"
    rows = [head, "|" + "---|" * 9]
    for r in records:
        ratio = f"{r.ratio_to_automodel:.1f}×" if r.ratio_to_automodel else "—"
        frac = f"{100 * r.arithmetic_fraction:.1f}" if r.arithmetic_fraction else "—"
        rows.append(f"| {r.system} | {r.model} | {r.audio_seconds:.0f} | {r.wall_seconds:.2f} | "
                    f"{r.x_realtime:,.0f} | {ratio} | {r.peak_gpu_mem_gb:.1f} | {frac} | {r.notes} |")
    return "\n".join(rows)


def save(records: list[Record], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in records], indent=2, ensure_ascii=False) + "\n")
