"""Where an ingest task's time goes, stage by stage, for one call (CPU, one thread).

Runs the real ingest task (`workers.ingest.files.ingest_files`, as a worker runs it) on a stereo
8 kHz G.711 call against a throw-away SQLite database and an embedded Valkey, in a fresh
single-threaded process. Each stage is timed where the task calls it (wall and CPU seconds,
exclusive of the stages nested in it): claim, probe, decode + resample, spool writes, VAD
(fbank, LFR + CMVN, FSMN forward, fp32 recheck forward and bookkeeping, decisions), loudness, database rows, batching
(segment audio to the spool, batch rows). A warm-up task on a short call comes first, so that
model loading and first-use costs are not counted.

`--parallel N` runs N such processes at once, each on its own copy of the call (own database and Valkey),
and starts their timed tasks together after every warm-up has ended: the stages as they cost when N
ingest processes share the host's cores, caches and memory bus, as in `speechq up`'s ingest worker.
`--group K` gives each task K calls (as SPEECHQ_INGEST_GROUP_FILES does): the VAD runs on all their channels
together.

    python -m bench.ingest_stages --minutes 10 --repeat 3
    python -m bench.ingest_stages --minutes 10 --parallel 15 --group 4   # as the stack's 15 ingest processes
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


def child(warm_path: str, paths: list[str]) -> None:
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
        file_ids = [submit(path) for path in paths]  # each its own job: no copy is skipped as a duplicate
        print("ready", flush=True)
        sys.stdin.readline()  # the parent starts every concurrent child's timed task at once
        t0, c0 = time.perf_counter(), time.process_time()
        files.ingest_files.run(file_ids)  # one task on the whole group, as a worker runs it
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        with session_scope() as db:
            group = [db.get(File, i) for i in file_ids]
            segments = db.scalar(select(func.count(Segment.id)).where(Segment.file_id.in_(file_ids)))
            batches = db.scalar(select(func.count(Batch.id)))
            out = {"audio_s": sum(f.duration_s * f.num_channels for f in group),
                   "call_s": sum(f.duration_s for f in group), "wall_s": wall, "cpu_s": cpu,
                   "segments": segments, "batches": batches, "state": ",".join(sorted({f.state.value for f in group})),
                   "stages": {k: [stages.wall[k], stages.cpu[k]] for k in stages.wall}}
        print(json.dumps(out))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=3, help="fresh processes, one after another; the median is shown")
    p.add_argument("--parallel", type=int, default=1, help="processes at once in each repeat, each on its own copy "
                                                          "of the call, timed tasks started together")
    p.add_argument("--group", type=int, default=1, help="calls per task (as SPEECHQ_INGEST_GROUP_FILES): the VAD "
                                                       "runs on all their channels together")
    p.add_argument("--source", type=Path, default=None, help="tile this recording instead of synthesising calls")
    p.add_argument("--out", type=Path, default=None, help="write every run's stages here (JSON)")
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    work = Path(tempfile.mkdtemp(prefix="speechq-stages-calls-"))
    call = make_call(work / "call.wav", args.minutes * 60, args.source)
    warm = make_call(work / "warm.wav", 20, args.source)
    copies = [call] + [work / f"call-{i}.wav" for i in range(1, args.parallel)]
    for c in copies[1:]:
        shutil.copyfile(call, c)  # the same audio, distinct files: each child's task reads its own
    runs = []
    for _ in range(args.repeat):
        runs.extend(together([[c] * args.group for c in copies], warm))
    shutil.rmtree(work, ignore_errors=True)
    report(runs, args.minutes, args.parallel, args.group)
    if args.out:
        args.out.write_text(json.dumps({"cpu": platform_cpu(), "parallel": args.parallel, "group": args.group,
                                        "runs": runs}, indent=1))


def together(groups: list[list[Path]], warm: Path) -> list[dict]:
    """One child per group of calls, warmed up apart, then their timed tasks started at the same moment."""
    logs = [tempfile.TemporaryFile(mode="w+") for _ in groups]  # stderr: a pipe nobody reads could fill and block
    procs = [subprocess.Popen([sys.executable, "-m", "bench.ingest_stages", "--child", str(warm), *map(str, g)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=ONE_THREAD)
             for g, log in zip(groups, logs)]

    def failed(k: int, when: str) -> RuntimeError:
        logs[k].seek(0)
        return RuntimeError(f"benchmark child failed {when}:\n{logs[k].read()[-3000:]}")

    try:
        for k, proc in enumerate(procs):
            while (line := proc.stdout.readline()) and line.strip() != "ready":
                pass  # funasr may print to stdout while it loads
            if not line:
                raise failed(k, "before its task")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        runs = []
        for k, proc in enumerate(procs):
            out, _ = proc.communicate()
            if proc.returncode:
                raise failed(k, "in its task")
            runs.append(json.loads(out.strip().splitlines()[-1]))
        return runs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for log in logs:
            log.close()


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def report(runs: list[dict], minutes: float, parallel: int = 1, group: int = 1) -> None:
    names = sorted({k for r in runs for k in r["stages"]}, key=lambda k: -median([r["stages"].get(k, [0, 0])[1]
                                                                                    for r in runs]))
    cpu_total = median([r["cpu_s"] for r in runs])
    call_s = runs[0]["call_s"]
    at_once = f", {parallel} at once" if parallel > 1 else ""
    calls = f"{group} x " if group > 1 else ""
    print(f"{calls}{minutes:g} min stereo 8 kHz G.711 call on {platform_cpu()}, 1 thread, median of {len(runs)} "
          f"fresh processes{at_once}; {runs[0]['segments']} segments, {runs[0]['batches']} batch(es), "
          f"file {runs[0]['state']}")
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
