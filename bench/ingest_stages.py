"""Where an ingest task's time goes, stage by stage, for one call (CPU, one thread).

Runs the real ingest task (`workers.ingest.files.ingest_files`, as a worker runs it) on a stereo
8 kHz G.711 call against a throw-away SQLite database and an embedded Valkey, in a fresh
single-threaded process. Each stage is timed where the task calls it (wall and CPU seconds,
exclusive of the stages nested in it): claim, probe, decode + resample, spool writes, VAD
(fbank, LFR + CMVN, FSMN forward, fp32 recheck forward and bookkeeping, decisions), loudness, database rows, batching
(segment audio to the spool, batch rows). A warm-up task on a short call comes first, so that
model loading and first-use costs are not counted.

    python -m bench.ingest_stages --minutes 10 --repeat 3
    python -m bench.ingest_stages --minutes 10 --source call.flac   # where espeak-ng is missing
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.ingest_bench import ONE_THREAD, make_call, platform_cpu


class Stages:
    """Exclusive wall and CPU time per stage: a stage's time excludes the stages called inside it."""

    def __init__(self):
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.stack: list[list[float]] = []  # per open stage: [wall, cpu] spent in its children

    def _enter(self):
        self.stack.append([0.0, 0.0])
        return time.perf_counter(), time.process_time()

    def _leave(self, name: str, start) -> None:
        wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
        inner = self.stack.pop()
        self.wall[name] += wall - inner[0]
        self.cpu[name] += cpu - inner[1]
        if self.stack:
            self.stack[-1][0] += wall
            self.stack[-1][1] += cpu

    def call(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = self._enter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._leave(name, start)
        return timed

    def generator(self, name: str, fn):
        """Times each step of a generator (its own work between the values it yields)."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            it = iter(fn(*args, **kwargs))
            while True:
                start = self._enter()
                try:
                    value = next(it)
                except StopIteration:
                    return
                finally:
                    self._leave(name, start)
                yield value
        return timed

    def patch(self, owner, attr: str, name: str, generator: bool = False) -> None:
        fn = getattr(owner, attr)
        setattr(owner, attr, (self.generator if generator else self.call)(name, fn))


def instrument(stages: Stages) -> None:
    """Wrap the functions the ingest task calls, where it looks them up."""
    import sqlalchemy.orm

    from shared import progress, storage
    from workers.ingest import batching, decode, files
    from workers.ingest.vad import decisions, scorer
    from workers.models import fbank

    stages.patch(files, "claim_file", "claim (database)")
    stages.patch(files, "check", "probe")
    stages.patch(decode, "_stream_soundfile", "decode + resample", generator=True)
    stages.patch(decode, "_stream_ffmpeg", "decode + resample", generator=True)
    stages.patch(files, "decode_to_spool", "channel audio to the spool")
    stages.patch(files, "read_raw", "channel audio from the spool", generator=True)
    stages.patch(scorer.Scorer, "features", "VAD: LFR + CMVN")
    stages.patch(fbank.LogMel, "forward", "VAD: fbank")
    stages.patch(scorer._Weights, "forward", "VAD: FSMN forward")
    stages.patch(scorer._Weights, "at", "VAD: fp32 recheck forward")
    stages.patch(scorer.Scorer, "_recheck", "VAD: fp32 recheck (bookkeeping)")
    stages.patch(decisions, "speech_frames", "VAD: decisions")
    stages.patch(decisions, "segments", "VAD: decisions")
    stages.patch(files, "segment_levels", "loudness")
    stages.patch(files, "_store", "segment rows (database)")
    stages.patch(progress, "settle", "segment rows (database)")
    stages.patch(storage.Spool, "write_batch", "batching: batch file write")
    stages.patch(batching, "_make_batch", "batching: cut segments, rows")
    stages.patch(batching, "batch_pending", "batching: cut segments, rows")
    stages.patch(sqlalchemy.orm.Session, "commit", "commits (database)")


def child(path: str, warm_path: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="speechq-stages-"))
    import socket

    from shared.broker import start_embedded

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_embedded(port, work / "valkey")
    os.environ.update({"SPEECHQ_DATA_DIR": str(work), "REDIS_URL": f"redis://127.0.0.1:{server.port}/0"})
    try:
        from shared.config import get_settings

        get_settings.cache_clear()
        from shared.db import migrate, session_scope
        from shared.schema import Batch, File, Job, Segment
        from sqlalchemy import func, select
        from workers.ingest import files, vad

        migrate()
        vad.detector(get_settings().vad_model_dir)  # funasr loads the model

        def submit(p: str) -> str:
            with session_scope() as db:
                job = Job(name="bench")
                db.add(job)
                db.flush()
                f = File(job_id=job.id, name=Path(p).name, path=p, size_bytes=Path(p).stat().st_size)
                db.add(f)
                db.flush()
                job.files_total = 1
                return f.id

        files.ingest_files.run([submit(warm_path)])  # first use of everything, not counted
        stages = Stages()
        instrument(stages)
        file_id = submit(path)
        t0, c0 = time.perf_counter(), time.process_time()
        files.ingest_files.run([file_id])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        with session_scope() as db:
            f = db.get(File, file_id)
            segments = db.scalar(select(func.count(Segment.id)).where(Segment.file_id == file_id))
            batches = db.scalar(select(func.count(Batch.id)))
            out = {"audio_s": f.duration_s * f.num_channels, "call_s": f.duration_s, "wall_s": wall, "cpu_s": cpu,
                   "segments": segments, "batches": batches, "state": f.state.value,
                   "stages": {k: [stages.wall[k], stages.cpu[k]] for k in stages.wall}}
        print(json.dumps(out))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=3, help="fresh processes, one after another; the median is shown")
    p.add_argument("--source", type=Path, default=None, help="tile this recording instead of synthesising calls")
    p.add_argument("--out", type=Path, default=None, help="write every run's stages here (JSON)")
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="speechq-stages-calls-"))
    call = make_call(work / "call.wav", args.minutes * 60, args.source)
    warm = make_call(work / "warm.wav", 20, args.source)
    runs = []
    for _ in range(args.repeat):
        proc = subprocess.run([sys.executable, "-m", "bench.ingest_stages", "--child", str(call), str(warm)],
                              capture_output=True, text=True, env=ONE_THREAD)
        if proc.returncode:
            raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    shutil.rmtree(work, ignore_errors=True)
    report(runs, args.minutes)
    if args.out:
        args.out.write_text(json.dumps({"cpu": platform_cpu(), "runs": runs}, indent=1))


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def report(runs: list[dict], minutes: float) -> None:
    names = sorted({k for r in runs for k in r["stages"]}, key=lambda k: -median([r["stages"].get(k, [0, 0])[1]
                                                                                    for r in runs]))
    cpu_total = median([r["cpu_s"] for r in runs])
    call_s = runs[0]["call_s"]
    print(f"{minutes:g} min stereo 8 kHz G.711 call on {platform_cpu()}, 1 thread, median of {len(runs)} "
          f"fresh processes; {runs[0]['segments']} segments, {runs[0]['batches']} batch(es), file {runs[0]['state']}")
    print("| stage | wall s | CPU s | share of CPU |")
    print("|---|---:|---:|---:|")
    for k in names:
        w, c = median([r["stages"].get(k, [0, 0])[0] for r in runs]), median([r["stages"].get(k, [0, 0])[1] for r in runs])
        print(f"| {k} | {w:.3f} | {c:.3f} | {100 * c / cpu_total:.1f} % |")
    rest_w = median([r["wall_s"] - sum(v[0] for v in r["stages"].values()) for r in runs])
    rest_c = median([r["cpu_s"] - sum(v[1] for v in r["stages"].values()) for r in runs])
    print(f"| rest of the task | {rest_w:.3f} | {rest_c:.3f} | {100 * rest_c / cpu_total:.1f} % |")
    wall = median([r["wall_s"] for r in runs])
    print(f"| **whole task** | {wall:.3f} | {cpu_total:.3f} | call-s per CPU-s: {call_s / cpu_total:.0f} "
          f"(channel-s: {2 * call_s / cpu_total:.0f}) |")


if __name__ == "__main__":
    main()
