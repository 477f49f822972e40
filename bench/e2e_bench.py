"""End-to-end benchmark: the whole stack exactly as `speechq up` runs it, calls in and rows out.

Generates N distinct calls (stereo 8 kHz G.711 μ-law WAV, lengths mixed between --min-minutes and
--max-minutes, no two with the same sha256) from one source recording, starts `speechq up --no-flower`
on embedded defaults (Valkey, SQLite, the spool) in a fresh data folder, submits every call as one job
of server paths, and measures until the job ends:

- call-seconds per wall second from submit to done (call duration, as the job's audio_total_s counts
  it; channel-seconds are twice that for stereo), and the same from `up` to done;
- time to the first batch on the GPU and to the first stored result;
- GPU busy fraction (NVML utilisation, sampled) and peak GPU memory as the driver sees it (NVML:
  the device's used memory and the GPU worker's own);
- CPU seconds per role (ingest, gpu, api, broker, supervisor) from the process tree;
- status poll latency (p50/p99) through the run;
- segments stored vs segments the VAD made, and files done/failed;
- a timeline in 5 s steps from submit: speech-seconds segmented (stored by the ingest workers) and
  speech-seconds with results (stored by the GPU worker), and the GPU busy fraction in each step, so
  that the ramp at the start and the tail at the end show.

`--baseline-calls K` also runs what a user has today on the first K calls, side by side: funasr
AutoModel in one process on the same GPU, as its docs show it (SenseVoice with its FSMN-VAD, and
emotion2vec+ on each VAD segment), channel by channel.

    python -m bench.e2e_bench --hours 40 --baseline-calls 3 --out bench/results/e2e.json
    python -m bench.e2e_bench --hours 40 --gpu-memory-gb 16 --out bench/results/e2e-16gb.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench.common import Record, commit, save, table
from bench.e2e_stack import ports_free, start_stack, stop_stack, wait_ready
from bench.gpu_bench import ensure_models

RATE = 8000
ROLES = (("-Q ingest", "ingest"), ("ForkPoolWorker", "ingest"), ("-Q gpu", "gpu"), ("uvicorn", "api"),
         ("api.main", "api"), ("-Q housekeeping", "housekeeping"), ("valkey", "broker"), ("redis-server", "broker"),
         ("compile_worker", "gpu compile workers"), ("api.cli up", "supervisor"))


# --- calls -------------------------------------------------------------------------------------------

def source_call(path: Path) -> Path:
    """The recording the calls are made of: a synthesised two-party call (espeak-ng), unless it exists."""
    if not path.exists():
        from shared import samples

        turns = [(i % 2, text) for i, (_, text) in enumerate(samples.AGENT_CUSTOMER * 3)]
        path.parent.mkdir(parents=True, exist_ok=True)
        samples.stereo_g711_call(path, turns)
    return path


def _make_call(args: tuple[Path, Path, float, int]) -> tuple[str, float, str]:
    """One call of `seconds`: the source again and again from random offsets with random pauses
    between, both channels together (turn-taking kept), plus dither at about -66 dBFS so that no two
    calls share a byte."""
    import soundfile as sf

    out, src, seconds, seed = args
    base, rate = sf.read(src, dtype="float32", always_2d=True)
    assert rate == RATE, f"{src}: {rate} Hz, not {RATE}"
    rng = np.random.default_rng(seed)
    need, parts, have = int(seconds * RATE), [], 0
    while have < need:
        start = int(rng.integers(0, base.shape[0] // 2))
        piece = base[start:]
        gap = np.zeros((int(rng.uniform(0.3, 3.0) * RATE), 2), dtype=np.float32)
        parts += [piece, gap]
        have += piece.shape[0] + gap.shape[0]
    audio = np.concatenate(parts)[:need]
    audio += rng.standard_normal(audio.shape).astype(np.float32) * 5e-4
    sf.write(out, np.clip(audio, -1, 1), RATE, subtype="ULAW", format="WAV")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return out.name, seconds, digest


def make_calls(folder: Path, src: Path, hours: float, low_min: float, high_min: float, seed: int,
               procs: int) -> list[tuple[str, float]]:
    rng = np.random.default_rng(seed)
    lengths, total = [], 0.0
    while total < hours * 3600:
        lengths.append(float(rng.uniform(low_min, high_min) * 60))
        total += lengths[-1]
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"call-{i:05d}.wav", src, s, seed * 100_003 + i) for i, s in enumerate(lengths)]
    with ProcessPoolExecutor(procs) as pool:
        made = list(pool.map(_make_call, jobs, chunksize=4))
    digests = {d for _, _, d in made}
    assert len(digests) == len(made), "two calls share a sha256"
    return [(name, s) for name, s, _ in made]


# --- sampling ----------------------------------------------------------------------------------------

@dataclass
class Samples:
    gpu_util: list[float] = field(default_factory=list)
    gpu_t: list[float] = field(default_factory=list)  # perf_counter of each GPU sample
    device_used: list[int] = field(default_factory=list)
    process_used: list[int] = field(default_factory=list)
    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (role, cpu seconds so far)
    rss_peak: dict[str, int] = field(default_factory=dict)  # role -> the largest sum of its processes' RSS
    rss_peak_one: dict[str, int] = field(default_factory=dict)  # role -> the largest RSS of one of its processes
    polls_ms: list[float] = field(default_factory=list)
    first_batch_s: float | None = None
    first_result_s: float | None = None
    t0: float = 0.0  # perf_counter at submit
    t0_epoch: float = 0.0  # the same instant as a Unix time (for the database's timestamps)


def role_of(proc: psutil.Process) -> str:
    try:
        line = " ".join(proc.cmdline())
    except psutil.Error:
        return "?"
    for needle, role in ROLES:
        if needle in line:
            return role
    return "other: " + line[:80]


def sample_gpu(samples: Samples, stop: threading.Event, index: int) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML: the run goes on without GPU figures
        return
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    while not stop.is_set():
        samples.gpu_util.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        samples.gpu_t.append(time.perf_counter())
        samples.device_used.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        samples.process_used.append(max((p.usedGpuMemory or 0 for p in procs), default=0))
        time.sleep(0.1)
    pynvml.nvmlShutdown()


def sample_cpu(samples: Samples, stop: threading.Event, root: psutil.Process) -> None:
    while not stop.is_set():
        rss: dict[str, int] = {}
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                role = samples.cpu.get(proc.pid, (None, 0))[0] or role_of(proc)
                samples.cpu[proc.pid] = (role, t.user + t.system)
                one = proc.memory_info().rss
                rss[role] = rss.get(role, 0) + one
                samples.rss_peak_one[role] = max(samples.rss_peak_one.get(role, 0), one)
            except psutil.Error:
                pass
        for role, used in rss.items():
            samples.rss_peak[role] = max(samples.rss_peak.get(role, 0), used)
        time.sleep(0.5)


def sample_db(samples: Samples, stop: threading.Event, db: Path, t0: float) -> None:
    """When the first batch leaves the queue and the first result is stored (a fresh read-only
    connection each time, so that no snapshot is held)."""
    while not stop.is_set() and (samples.first_batch_s is None or samples.first_result_s is None):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                if samples.first_batch_s is None and con.execute(
                        "SELECT COUNT(*) FROM batches WHERE state != 'queued'").fetchone()[0]:
                    samples.first_batch_s = time.perf_counter() - t0
                if samples.first_result_s is None and con.execute("SELECT COUNT(*) FROM results").fetchone()[0]:
                    samples.first_result_s = time.perf_counter() - t0
            finally:
                con.close()
        except sqlite3.Error as exc:
            logging.getLogger("bench.e2e").warning("database sample failed: %s", exc)
        time.sleep(0.1)


def run_job(url: str, names: list[str], samples: Samples, db: Path, timeout: float) -> tuple[dict, float]:
    stop = threading.Event()
    t0 = samples.t0 = time.perf_counter()
    samples.t0_epoch = time.time()
    reply = httpx.post(f"{url}/v1/jobs/paths", json={"paths": names, "name": "e2e-bench"}, timeout=300)
    reply.raise_for_status()
    job = reply.json()
    watcher = threading.Thread(target=sample_db, args=(samples, stop, db, t0), daemon=True)
    watcher.start()
    with httpx.Client(timeout=30) as client:
        while True:
            started = time.perf_counter()
            job = client.get(f"{url}/v1/jobs/{job['id']}").json()
            samples.polls_ms.append(1000 * (time.perf_counter() - started))
            if job["state"] in ("done", "failed", "cancelled"):
                break
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"the job did not end in {timeout:.0f} s: {job}")
            time.sleep(0.25)
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join(5)
    return job, wall


def counts(db: Path, job_id: str) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    q = lambda sql: con.execute(sql, (job_id,)).fetchone()[0]  # noqa: E731
    out = {
        "segments": q("SELECT COUNT(*) FROM segments WHERE job_id = ?"),
        "results": q("SELECT COUNT(*) FROM results WHERE job_id = ?"),
        "segments_done": q("SELECT COUNT(*) FROM segments WHERE job_id = ? AND state = 'done'"),
        "files_done": q("SELECT COUNT(*) FROM files WHERE job_id = ? AND state = 'done'"),
        "files_failed": q("SELECT COUNT(*) FROM files WHERE job_id = ? AND state = 'failed'"),
        "channel_seconds": q("SELECT COALESCE(SUM(duration_s * num_channels), 0) FROM files WHERE job_id = ?"),
        "speech_seconds": q("SELECT COALESCE(SUM(end_ms - start_ms), 0) / 1000.0 FROM segments WHERE job_id = ?"),
        "batches": q("SELECT COUNT(DISTINCT batch_id) FROM segments WHERE job_id = ?"),
    }
    con.close()
    return out


def timeline(db: Path, job_id: str, samples: Samples, wall: float, step: float = 5.0) -> list[dict]:
    """Per `step` seconds from submit: speech-seconds segmented and with results stored in it, and the
    GPU's mean busy fraction (NVML) over it."""
    def stamp(text: str) -> float:  # SQLite keeps UTC timestamps without their zone
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() - samples.t0_epoch

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    cut = con.execute("SELECT created_at, end_ms - start_ms FROM segments WHERE job_id = ?", (job_id,)).fetchall()
    done = con.execute("SELECT r.created_at, s.end_ms - s.start_ms FROM results r JOIN segments s "
                       "ON s.id = r.segment_id WHERE r.job_id = ?", (job_id,)).fetchall()
    con.close()
    bins = int(wall // step) + 1
    rows = [{"t": round(i * step, 1), "segmented_speech_s": 0.0, "results_speech_s": 0.0, "gpu_busy": None}
            for i in range(bins)]
    for key, pairs in (("segmented_speech_s", cut), ("results_speech_s", done)):
        for text, ms in pairs:
            i = min(bins - 1, max(0, int(stamp(text) // step)))
            rows[i][key] += ms / 1000.0
    util = np.array(samples.gpu_util, dtype=float)
    at = np.array(samples.gpu_t, dtype=float) - samples.t0
    for i, row in enumerate(rows):
        row["segmented_speech_s"] = round(row["segmented_speech_s"], 1)
        row["results_speech_s"] = round(row["results_speech_s"], 1)
        inside = util[(at >= i * step) & (at < (i + 1) * step)] if util.size else util
        if inside.size:
            row["gpu_busy"] = round(float(inside.mean()) / 100, 2)
    return rows


def timeline_table(rows: list[dict]) -> str:
    lines = ["| from submit (s) | speech segmented (s) | speech with results (s) | GPU busy |", "|---:|---:|---:|---:|"]
    for r in rows:
        busy = "" if r["gpu_busy"] is None else f"{100 * r['gpu_busy']:.0f} %"
        lines.append(f"| {r['t']:.0f} | {r['segmented_speech_s']:.0f} | {r['results_speech_s']:.0f} | {busy} |")
    return "\n".join(lines)


# --- the baseline ------------------------------------------------------------------------------------

def automodel_baseline(calls: Path, names: list[str], dirs: dict[str, Path], vad_dir: Path) -> tuple[float, float, int]:
    """funasr AutoModel as its docs run it, one process on this GPU: SenseVoice with its VAD on each
    channel, and emotion2vec+ on each of the VAD's segments. Returns (call seconds, wall, segments)."""
    import soundfile as sf
    import soxr
    import torch
    from funasr import AutoModel

    kw = dict(device="cuda:0" if torch.cuda.is_available() else "cpu", disable_update=True, disable_pbar=True,
              disable_log=True)
    asr = AutoModel(model=str(dirs["sensevoice"]), vad_model=str(vad_dir),
                    vad_kwargs={"max_single_segment_time": 30000}, **kw)
    vad = AutoModel(model=str(vad_dir), **kw)
    emo = AutoModel(model=str(dirs["e2v-16+8"]), **kw)
    warm = np.zeros(16000, dtype=np.float32)
    asr.generate(input=warm, cache={}, language="auto", use_itn=True, batch_size_s=60)
    emo.generate(warm, granularity="utterance", extract_embedding=False)
    seconds, segments = 0.0, 0
    start = time.perf_counter()
    for name in names:
        audio, rate = sf.read(calls / name, dtype="float32", always_2d=True)
        seconds += audio.shape[0] / rate
        for ch in range(audio.shape[1]):
            wav = soxr.resample(audio[:, ch], rate, 16000)
            asr.generate(input=wav, cache={}, language="auto", use_itn=True, batch_size_s=60, merge_vad=True,
                         merge_length_s=15)
            spans = vad.generate(input=wav, cache={})[0]["value"]
            for begin, end in spans:
                piece = wav[begin * 16:end * 16]
                if piece.size:
                    emo.generate(piece, granularity="utterance", extract_embedding=False)
                    segments += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return seconds, time.perf_counter() - start, segments


# --- main --------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=40.0, help="hours of calls in the job (call duration)")
    p.add_argument("--min-minutes", type=float, default=1.0)
    p.add_argument("--max-minutes", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--source", type=Path, default=Path("bench/.audio/call.wav"),
                   help="8 kHz stereo recording the calls are made of (synthesised when missing)")
    p.add_argument("--work", type=Path, default=None, help="folder for calls, data and logs (a temp folder)")
    p.add_argument("--models-dir", type=Path, default=Path("/tmp/speechq-bench-models"))
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--gpu-memory-gb", type=float, default=None, help="SPEECHQ_GPU_MEMORY_GB for the GPU worker")
    p.add_argument("--baseline-calls", type=int, default=0, help="run funasr AutoModel on the first K calls")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    # killed by `timeout` or a scheduler: leave through the `finally` below, which stops the stack (its own
    # process group), so that no stack outlives the bench
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ports_free(args.port)
    work = args.work or Path(tempfile.mkdtemp(prefix="speechq-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    calls = work / "calls"
    dirs = ensure_models(args.models_dir, args.size)
    src = source_call(args.source)
    t = time.perf_counter()
    made = make_calls(calls, src, args.hours, args.min_minutes, args.max_minutes, args.seed, os.cpu_count() or 2)
    names = [n for n, _ in made]
    call_seconds = sum(s for _, s in made)
    print(f"{len(made)} calls, {call_seconds / 3600:.1f} h, made in {time.perf_counter() - t:.0f} s", flush=True)

    url = f"http://127.0.0.1:{args.port}"
    samples = Samples()
    stop = threading.Event()
    gpu = threading.Thread(target=sample_gpu, args=(samples, stop, 0), daemon=True)
    t_up = time.perf_counter()
    proc, env = start_stack(work, calls, dirs, args.port, args.gpu_memory_gb)
    try:
        wait_ready(proc, env, work)
        ready_s = time.perf_counter() - t_up
        print(f"stack ready in {ready_s:.0f} s", flush=True)
        gpu.start()
        cpu_before = {}
        root = psutil.Process(proc.pid)
        for pr in [root, *root.children(recursive=True)]:
            t_ = pr.cpu_times()
            cpu_before[pr.pid] = t_.user + t_.system
        cpu = threading.Thread(target=sample_cpu, args=(samples, stop, root), daemon=True)
        cpu.start()
        job, wall = run_job(url, names, samples, work / "data" / "speechq.db", args.timeout)
        stop.set()
        cpu.join(5)
        gpu.join(5)
    finally:
        stop_stack(proc)
    n = counts(work / "data" / "speechq.db", job["id"])
    by_role: dict[str, float] = {}
    for pid, (role, used) in samples.cpu.items():
        by_role[role] = by_role.get(role, 0.0) + used - cpu_before.get(pid, 0.0)
    util = np.array(samples.gpu_util or [0])
    polls = np.array(samples.polls_ms or [0])
    gib = 1024**3
    summary = {
        "calls": len(made), "call_hours": call_seconds / 3600, "job_state": job["state"],
        "job_audio_total_s": job["audio_total_s"], "wall_submit_to_done_s": wall,
        "x_call_seconds": call_seconds / wall, "x_channel_seconds": n["channel_seconds"] / wall,
        "x_from_up": call_seconds / (wall + ready_s), "stack_ready_s": ready_s,
        "first_batch_on_gpu_s": samples.first_batch_s, "first_result_s": samples.first_result_s,
        "gpu_busy_fraction": float(util.mean()) / 100, "gpu_busy_p50": float(np.median(util)) / 100,
        "peak_device_used_gib": max(samples.device_used or [0]) / gib,
        "peak_gpu_worker_gib": max(samples.process_used or [0]) / gib,
        "gpu_memory_budget_gb": args.gpu_memory_gb, "cpu_seconds_by_role": by_role,
        "vad_device": os.environ.get("SPEECHQ_VAD_DEVICE", "cpu"),
        "rss_peak_gib_by_role": {k: round(v / 2**30, 3) for k, v in samples.rss_peak.items()},
        "rss_peak_gib_one_process_by_role": {k: round(v / 2**30, 3) for k, v in samples.rss_peak_one.items()},
        "cpu_cores_busy_by_role": {k: v / wall for k, v in by_role.items()},
        "status_poll_ms_p50": float(np.percentile(polls, 50)), "status_poll_ms_p99": float(np.percentile(polls, 99)),
        "polls": len(samples.polls_ms), **n, "cores": os.cpu_count(), "commit": commit(),
        "timeline": timeline(work / "data" / "speechq.db", job["id"], samples, wall),
    }
    budget = f"{args.gpu_memory_gb:g} GB budget" if args.gpu_memory_gb else "default budget"
    records = [Record(system=f"speechq up, whole stack ({budget})", model="FSMN-VAD + SenseVoiceSmall + emotion2vec+ large",
                      audio_seconds=call_seconds, wall_seconds=wall, x_realtime=call_seconds / wall,
                      peak_gpu_mem_gb=summary["peak_gpu_worker_gib"],
                      notes=f"{len(made)} calls; {n['results']}/{n['segments']} segments stored; GPU busy "
                            f"{100 * summary['gpu_busy_fraction']:.0f}%; first result {samples.first_result_s or 0:.1f} s")]
    if args.baseline_calls:
        from shared.config import Settings

        b_seconds, b_wall, b_segments = automodel_baseline(calls, names[:args.baseline_calls], dirs,
                                                           Settings().vad_model_dir)
        base_x = b_seconds / b_wall
        summary.update(baseline_call_seconds=b_seconds, baseline_wall_s=b_wall, baseline_x=base_x,
                       baseline_segments=b_segments, ratio_to_automodel=(call_seconds / wall) / base_x)
        records[0].ratio_to_automodel = (call_seconds / wall) / base_x
        records.append(Record(system="funasr AutoModel (SenseVoice with its VAD, emotion2vec+ per segment), one process",
                              model="FSMN-VAD + SenseVoiceSmall + emotion2vec+ large", audio_seconds=b_seconds,
                              wall_seconds=b_wall, x_realtime=base_x, peak_gpu_mem_gb=0.0,
                              notes=f"first {args.baseline_calls} calls of the same set; {b_segments} segments"))
    try:
        import torch

        gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        gpu_name = "?"
    for r in records:
        r.gpu = gpu_name
    print(table(records))
    print(timeline_table(summary["timeline"]))
    print(json.dumps(summary, indent=2))
    if args.out:
        save(records, args.out)
        args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        # the supervisor's log and the GPU worker's (per-batch claim/read/launch/device/write times)
        for log_path in (work / "up.log", *sorted((work / "data" / "logs").glob("gpu*.log"))):
            if log_path.exists():
                (args.out.parent / f"{args.out.stem}.{log_path.name}").write_text(
                    log_path.read_text(errors="replace")[-400_000:])
    if job["state"] != "done" or n["results"] != n["segments"]:
        raise SystemExit(f"incomplete: job {job['state']}, {n['results']} of {n['segments']} segments stored")


if __name__ == "__main__":
    main()
