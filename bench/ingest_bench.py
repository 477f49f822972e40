"""Ingest benchmark (CPU): decode + FSMN-VAD throughput per core, and peak memory by call length.

Calls are synthesised here (espeak-ng turns with pauses, `shared/samples.py`), 8 kHz stereo G.711
like a call-center archive. Each measurement runs in a fresh process so that its peak RSS is its own.

    python -m bench.ingest_bench --minutes 10 --long-hours 3 --out bench/results/ingest.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Record, save, table


def make_call(path: Path, seconds: float) -> Path:
    """Repeat one synthesised two-party call (agent left, customer right) up to `seconds`."""
    from shared import samples

    base = samples.conversation(samples.AGENT_CUSTOMER, rate=8000)
    reps = int(np.ceil(seconds * 8000 / base.shape[1]))
    return samples.write(path, np.tile(base, (1, reps))[:, : int(seconds * 8000)], 8000, codec="pcm_mulaw")


def child(path: str) -> None:
    """One file through the ingest stage's own functions (streamed decode to the spool, streamed
    VAD per channel); prints JSON timings."""
    from types import SimpleNamespace

    from shared.config import Settings
    from shared.storage import Spool, read_raw
    from shared.vad import CHUNK_SAMPLES, segments, segments_stream
    from workers.ingest import check, decode_to_spool

    settings = Settings()
    segments(np.zeros(16000, dtype=np.float32) + 1e-3, settings.vad_model_dir, 30000)  # load the model
    spool = Spool(Path(tempfile.mkdtemp(prefix="speechq-ingest-spool-")))
    f = SimpleNamespace(id="bench", job_id="bench", path=path)
    t0 = time.perf_counter()
    info = check(f, settings)
    paths, _ = decode_to_spool(f, info, spool)
    t1 = time.perf_counter()
    n = sum(len(segments_stream(read_raw(p, CHUNK_SAMPLES), settings.vad_model_dir, 30000)) for p in paths)
    t2 = time.perf_counter()
    spool.clean_job("bench")
    print(json.dumps({"audio_s": info.duration_s * info.channels, "decode_s": t1 - t0, "vad_s": t2 - t1,
                      "segments": n, "rss_gb": peak_rss_kib() / 2**20}))


def peak_rss_kib() -> int:
    """This process's own peak RSS. Not getrusage: Linux carries ru_maxrss across exec, so a child
    started by a large parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.ingest_bench", "--child", str(path)], capture_output=True,
                         text=True, check=True, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                                      "PATH": "/usr/bin:/bin", "PYTHONPATH": "."})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--long-hours", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.child:
        child(args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="speechq-ingest-bench-"))
    records = []
    for label, seconds in ((f"{args.minutes:g} min call", args.minutes * 60),
                           (f"{args.long_hours:g} h call", args.long_hours * 3600)):
        path = make_call(work / f"{seconds:.0f}s.wav", seconds)
        r = run(path)
        wall = r["decode_s"] + r["vad_s"]
        records.append(Record(system="ingest", model="ffmpeg/libsndfile decode + FSMN-VAD (funasr, fp32)",
                              audio_seconds=r["audio_s"], wall_seconds=wall, x_realtime=r["audio_s"] / wall,
                              peak_gpu_mem_gb=0.0, gpu="none (CPU, 1 thread)",
                              notes=f"{label}, 2 channels; decode {r['decode_s']:.1f} s, VAD {r['vad_s']:.1f} s, "
                                    f"{r['segments']} segments; peak RSS {r['rss_gb']:.2f} GiB"))
        path.unlink()
    print(table(records))
    if args.out:
        save(records, args.out)


if __name__ == "__main__":
    main()
