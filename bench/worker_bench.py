"""A whole GPU worker measured: Celery task in (real broker), database rows out.

Starts an embedded Valkey and one gpu-queue Celery worker process (the launcher's command line),
fills the database and the spool with packed batches as the ingest stage would, enqueues them,
and splits the wall time into model time and everything else (claim, batch read, result write,
broker and scheduling between tasks).

    python -m bench.worker_bench --batches 12 --out bench/results/worker.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Record, save, table, utterances
from bench.gpu_bench import ensure_models

LINE = re.compile(r"batch \w+: (\d+) segments, ([\d.]+) s audio; claim ([\d.]+) s, read ([\d.]+) s, "
                  r"launch ([\d.]+) s, gpu ([\d.]+) s, wait ([\d.]+) s, write ([\d.]+) s")


def fill(batches: int, batch_seconds: float, seed: int = 3) -> tuple[list[str], float]:
    from workers.ingest.lengths import Item, by_length
    from shared.config import get_settings
    from shared.db import session_scope
    from shared.schema import Batch, Channel, File, FileState, Job, JobState, Segment, SegmentState
    from shared.storage import Spool

    spool = Spool(get_settings().spool)
    wavs = utterances(int(batches * batch_seconds / 9) + 8, seed=seed)
    groups, _ = by_length([Item(str(i), len(w) / 16000) for i, w in enumerate(wavs)], batch_seconds, flush=True)
    groups = groups[:batches]
    ids, total = [], 0.0
    with session_scope() as db:
        job = Job(state=JobState.running, files_total=1)
        db.add(job)
        db.flush()
        f = File(job_id=job.id, name="bench.wav", path="-", state=FileState.segmented, duration_s=0.0)
        db.add(f)
        db.flush()
        ch = Channel(file_id=f.id, index=0, label="agent")
        db.add(ch)
        db.flush()
        for group in groups:
            pieces = [wavs[int(it.id)] for it in group]
            lengths = np.array([len(p) for p in pieces])
            batch = Batch(path="", num_segments=len(pieces), audio_seconds=float(lengths.sum()) / 16000,
                          padded_seconds=float(lengths.max() * len(lengths)) / 16000)
            db.add(batch)
            db.flush()
            segs = [Segment(job_id=job.id, file_id=f.id, channel_id=ch.id, start_ms=0, end_ms=int(n / 16),
                            state=SegmentState.batched, batch_id=batch.id) for n in lengths]
            db.add_all(segs)
            db.flush()
            path = spool.batch(batch.id)
            spool.write_batch(path, audio=np.concatenate(pieces), offsets=np.concatenate(([0], np.cumsum(lengths))),
                              segment_ids=np.array([s.id for s in segs]), languages=np.array(["auto"] * len(segs)),
                              itn=np.array([True] * len(segs)))
            batch.path = str(path)
            ids.append(batch.id)
            total += batch.audio_seconds
        f.duration_s = total
    return ids, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models-dir", type=Path, default=Path("/tmp/speechq-bench-models"))
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-seconds", type=float, default=600.0)
    p.add_argument("--compile", default="layers", choices=["off", "layers", "model"])
    p.add_argument("--prefetch", type=int, default=1, help="messages the GPU worker reserves at once")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    dirs = ensure_models(args.models_dir, args.size)
    work = Path(tempfile.mkdtemp(prefix="speechq-worker-bench-"))
    from shared.broker import start_embedded

    valkey = start_embedded(6399, work / "valkey")
    os.environ.update(SPEECHQ_DATA_DIR=str(work), REDIS_URL=f"redis://127.0.0.1:{valkey.port}/0",
                      SPEECHQ_SENSEVOICE_MODEL_DIR=str(dirs["sensevoice"]),
                      SPEECHQ_EMOTION2VEC_MODEL_DIR=str(dirs["e2v-16+8"]),
                      SPEECHQ_COMPILE=args.compile, SPEECHQ_BATCH_SECONDS=str(args.batch_seconds))
    from shared import tasks
    from shared.db import migrate, session_scope
    from shared.schema import Batch, BatchState
    from api import launcher

    migrate()
    ids, audio = fill(args.batches, args.batch_seconds)
    (spec,) = launcher.gpu_workers(os.environ.get("CUDA_VISIBLE_DEVICES", "0") or None, prefetch=args.prefetch)
    log_path = work / "gpu-worker.log"
    worker = subprocess.Popen(spec.argv, env={**os.environ, **spec.env}, stdout=open(log_path, "w"),
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while "models ready" not in log_path.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)

        start = time.perf_counter()
        for batch_id in ids:
            tasks.send_batch(batch_id)
        while True:
            with session_scope() as db:
                done = db.query(Batch).filter(Batch.id.in_(ids), Batch.state == BatchState.done).count()
            if done == len(ids):
                break
            assert worker.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.02)
        wall = time.perf_counter() - start
    finally:
        worker.terminate()
        worker.wait(60)
        valkey.stop()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, args.out.with_suffix(".gpu-worker.log"))
    parts = np.array([[float(x) for x in m.groups()[2:]] for m in LINE.finditer(log_path.read_text())])
    # gpu: each batch's device time, from its upload to its last copy back (CUDA events). Batches
    # queue back to back on the device, so whatever the device spends waiting for the host (broker,
    # claim, read, staging, launches, the writer's share of the GIL) is the wall time outside them.
    claim, read, launch, model, wait, write = parts.sum(axis=0)
    other = wall - model
    summary = {"batches": len(ids), "audio_seconds": audio, "wall_s": wall, "model_s": model, "claim_s": claim,
               "read_s": read, "launch_s": launch, "write_s": write, "outside_model_s": other,
               "overhead_fraction": other / model, "compile": args.compile, "prefetch": args.prefetch}
    rec = Record(system=f"speechq GPU worker (Celery task in, SQLite rows out), prefetch {args.prefetch}",
                 model="SenseVoiceSmall + emotion2vec+ large (16+8)", audio_seconds=audio, wall_seconds=wall,
                 x_realtime=audio / wall, peak_gpu_mem_gb=0.0,
                 notes=f"device {model:.2f} s; outside it {other:.2f} s = {100 * other / model:.1f}% of device "
                       f"time (host, overlapped: claim {claim:.2f}, read {read:.2f}, launch {launch:.2f}, "
                       f"write {write:.2f}); compile={args.compile}; prefetch={args.prefetch}")
    print(table([rec]))
    print(json.dumps(summary, indent=2))
    if args.out:
        save([rec], args.out)
        args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
