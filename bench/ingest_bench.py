"""Ingest benchmark (CPU): decode + FSMN-VAD throughput per core, and peak memory by call length.

Calls are synthesised here (espeak-ng turns with pauses, `shared/samples.py`), 8 kHz stereo G.711
like a call-center archive, or tiled from `--source` (any file soundfile reads: the GPU machine
has neither espeak-ng nor ffmpeg). Each measurement runs in fresh single-threaded processes, so
that timings are per core and peak RSS is each process's own. `--workers N` runs N such
processes at once on N copies of the call (aggregate throughput of N cores).

    python -m bench.ingest_bench --minutes 10 --long-hours 3 --out bench/results/ingest.json
    python -m bench.ingest_bench --minutes 10 --long-hours 0 --workers 16 --source call.flac
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Record, save, table

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "PYTHONPATH": os.environ.get("PYTHONPATH", ".")}


def make_call(path: Path, seconds: float, source: Path | None) -> Path:
    """A stereo 8 kHz μ-law call of `seconds`, by repeating a synthesised two-party call (agent left,
    customer right) or the given recording."""
    import soundfile as sf

    if source is not None:
        base, rate = sf.read(source, dtype="float32", always_2d=True)
        base = base.T
    else:
        from shared import samples

        base, rate = samples.conversation(samples.AGENT_CUSTOMER, rate=8000), 8000
    reps = int(np.ceil(seconds * rate / base.shape[1]))
    audio = np.tile(base, (1, reps))[:, : int(seconds * rate)]
    sf.write(path, audio.T, rate, subtype="ULAW", format="WAV")
    return path


def child(path: str, precision: str, automodel: bool) -> None:
    """One file through the ingest stage's own functions (streamed decode to the spool, then all
    channels through the batched VAD); prints JSON timings."""
    from types import SimpleNamespace

    from workers.ingest import vad
    from shared.config import Settings
    from shared.storage import Spool, read_raw
    from workers.ingest.files import check, decode_to_spool

    settings = Settings()
    max_ms = int(settings.max_segment_seconds * 1000)
    vad.segments(np.zeros(16000, dtype=np.float32) + 1e-3, settings.vad_model_dir, max_ms, precision)  # load
    spool = Spool(Path(tempfile.mkdtemp(prefix="speechq-ingest-spool-")))
    f = SimpleNamespace(id="bench", job_id="bench", path=path)
    t0 = time.perf_counter()
    info = check(f, settings)
    paths, _ = decode_to_spool(f, info, spool)
    scorer = vad.detector(settings.vad_model_dir, precision).scorer
    seen = (scorer.rechecked, scorer.frames)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t1 = time.perf_counter()
    spans = vad.segments_many([read_raw(p, vad.CHUNK_SAMPLES) for p in paths], settings.vad_model_dir, max_ms,
                              precision)
    t2 = time.perf_counter()
    out = {"audio_s": info.duration_s * info.channels, "decode_s": t1 - t0, "vad_s": t2 - t1,
           "segments": sum(len(s) for s in spans), "rss_gb": peak_rss_kib() / 2**20,
           "rechecked": (scorer.rechecked - seen[0]) / max(1, scorer.frames - seen[1]),
           "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}
    if automodel:  # funasr AutoModel on the same decoded channels, as its README runs it
        from shared.models.registry import load_automodel
        from shared.storage import channel_samples

        model = load_automodel(settings.vad_model_dir)
        t3 = time.perf_counter()
        ref = [[tuple(s) for s in model.generate(input=np.array(channel_samples(p)), disable_pbar=True,
                                                 max_end_silence_time=vad.MAX_END_SILENCE_MS)[0]["value"]]
               for p in paths]
        out["automodel_s"] = time.perf_counter() - t3
        ours = vad.detector(settings.vad_model_dir, precision).run([read_raw(p, vad.CHUNK_SAMPLES) for p in paths])
        out["same_segments"] = ours == ref
        out["boundaries_moved"] = sum(a != b for o, r in zip(ours, ref) for a, b in zip(o, r)) + \
            sum(abs(len(o) - len(r)) for o, r in zip(ours, ref))
    spool.clean_job("bench")
    print(json.dumps(out))


def peak_rss_kib() -> int:
    """This process's own peak RSS. Not getrusage: Linux carries ru_maxrss across exec, so a child
    started by a large parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(paths: list[Path], precision: str, automodel: bool) -> tuple[list[dict], float]:
    """One single-threaded child per path, all at once; (their results, wall time of the slowest)."""
    cmd = [sys.executable, "-m", "bench.ingest_bench", "--precision", precision] + (["--automodel"] if automodel else [])
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd + ["--child", str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ONE_THREAD) for p in paths]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"benchmark child failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--long-hours", type=float, default=3.0, help="0 skips the long call")
    p.add_argument("--workers", type=int, default=1, help="single-threaded processes at once (cores used)")
    p.add_argument("--precision", choices=["auto", "fp32", "mixed", "bf16"], default="auto")
    p.add_argument("--automodel", action="store_true", help="also time funasr AutoModel and compare segments")
    p.add_argument("--source", type=Path, default=None, help="tile this recording instead of synthesising calls")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.child:
        child(args.child, args.precision, args.automodel)
        return
    from workers.ingest.vad import resolve_precision

    precision = resolve_precision(args.precision)
    work = Path(tempfile.mkdtemp(prefix="speechq-ingest-bench-"))
    records = []
    cpu = platform_cpu()
    plan = [(f"{args.minutes:g} min call", args.minutes * 60, args.workers)]
    if args.long_hours > 0:
        plan.append((f"{args.long_hours:g} h call", args.long_hours * 3600, 1))
    for label, seconds, workers in plan:
        path = make_call(work / f"{seconds:.0f}s.wav", seconds, args.source)
        copies = [path] + [path.with_name(f"{path.stem}-{i}.wav") for i in range(1, workers)]
        for c in copies[1:]:
            c.hardlink_to(path)
        results, wall = run(copies, precision, args.automodel and workers == 1)
        audio = sum(r["audio_s"] for r in results)
        r = results[0]
        busy = max(r["decode_s"] + r["vad_s"] for r in results)
        notes = (f"{label}, 2 channels, {workers} process(es) x 1 thread on {cpu}; decode {r['decode_s']:.1f} s, "
                 f"VAD {r['vad_s']:.1f} s, {r['segments']} segments, {100 * r['rechecked']:.1f}% of frames "
                 f"recomputed in fp32, {r['minor_faults'] / 1e6:.2f} M page faults; peak RSS {max(x['rss_gb'] for x in results):.2f} GiB")
        ratio = None
        if "automodel_s" in r:
            ratio = (r["audio_s"] / (r["decode_s"] + r["vad_s"])) / (r["audio_s"] / (r["decode_s"] + r["automodel_s"]))
            notes += (f"; funasr AutoModel VAD {r['automodel_s']:.1f} s, segments identical: {r['same_segments']}"
                      f" ({r['boundaries_moved']} differ)")
        records.append(Record(system="ingest", model=f"decode + FSMN-VAD (speechq, {precision})",
                              audio_seconds=audio, wall_seconds=busy, x_realtime=audio / busy / workers,
                              ratio_to_automodel=ratio, peak_gpu_mem_gb=0.0, gpu="none (CPU)",
                              notes=notes + f"; x_realtime is per core; all {workers} together {audio / busy:.0f}x"))
        for c in copies:
            c.unlink()
    print(table(records))
    if args.out:
        save(records, args.out)


def platform_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
