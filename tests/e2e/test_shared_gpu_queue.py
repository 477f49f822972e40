"""Two gpu-queue workers on one device share the queue (issue 17, part 3): real processes on the CPU.

The stack (api.stack.Stack: API, ingest and housekeeping workers, Valkey, the gpu-queue worker on the CPU)
gets a second gpu-queue worker started the way the launcher starts the first (solo pool, one queue), under
its own name, supervised by the same Stack. One job is split into many small batches: both workers must
take some, every batch must be run exactly once (one "batch <id>: ..." line in the two workers' logs, one
claim in `batches.attempts`) and every segment must have exactly one result row.

Then the second worker is SIGKILLed while it holds a batch (stopped, through the chaos suite's gate, just
before it stores the batch's results, the batch `running` in the database) and the supervisor restarts it:
nothing lost or doubled, and the time to recover is recorded (the test's `recovery_*` properties).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from unittest import mock

import httpx
import psutil
import pytest
import redis
import soundfile as sf
from sqlalchemy import create_engine, text

from tests.conftest import free_port

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

DEADLINE = 20  # SPEECHQ_TASK_DEADLINE_SECONDS: a batch claimed this long ago by a dead worker is taken over
INTERVAL = 3  # SPEECHQ_RECONCILE_INTERVAL_SECONDS
SECOND = "gpu-cpu2"
BATCH_LINE = re.compile(r"batch ([0-9a-f]{32}): \d+ segments")


def write_calls(folder: Path, count: int, seed: int) -> list[Path]:
    """Distinct recordings (speech-like noise, 5-9 s, 16 kHz): no two share a sha256, none is deduplicated."""
    from bench.common import utterances

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, audio in enumerate(utterances(count, seed=seed, low=5.0, high=9.0)):
        path = folder / f"call{seed}-{i:02d}.wav"
        sf.write(path, audio, 16000, subtype="PCM_16")
        paths.append(path)
    return paths


def gone(process: psutil.Process, timeout: float = 30) -> None:
    """Until the process is dead (a zombie until the supervisor reaps it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {process.pid} survived SIGKILL for {timeout:.0f} s")


class Shared:
    """The stack with two gpu-queue workers, and what the test reads back: the database and the logs."""

    def __init__(self, stack, database_url: str):
        self.stack = stack
        self.http = httpx.Client(base_url=stack.api_url, timeout=120)
        self.db = create_engine(database_url)
        self.host = socket.gethostname()

    def submit(self, paths: list[Path]) -> str:
        r = self.http.post("/v1/jobs", files=[("files", (p.name, p.read_bytes())) for p in paths])
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def wait(self, job_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        body = None
        while time.monotonic() < deadline:
            body = self.http.get(f"/v1/jobs/{job_id}").json()
            if body["state"] in ("done", "failed", "cancelled"):
                return body
            self.stack.supervise_once()
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not end within {timeout:.0f} s: {body}{self.logs()}")

    def batch_runs(self) -> dict[str, Counter]:
        """Per worker (the stack's child name): how many times its log says it ran each batch."""
        return {name: Counter(BATCH_LINE.findall(self.stack.children[name].log.read_text(errors="replace")))
                for name in ("gpu-cpu", SECOND)}

    def batches(self, job_id: str) -> dict[str, tuple[str, int, str | None]]:
        """The job's batches: id -> (state, attempts, worker that last claimed it)."""
        with self.db.connect() as conn:
            rows = conn.execute(text(
                "SELECT DISTINCT b.id, b.state, b.attempts, b.worker FROM batches b "
                "JOIN segments s ON s.batch_id = b.id WHERE s.job_id = :j"), {"j": job_id}).all()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def running_on(self, worker: str) -> set[str]:
        with self.db.connect() as conn:
            return set(conn.scalars(text("SELECT id FROM batches WHERE state = 'running' AND worker = :w"),
                                    {"w": f"{worker}@{self.host}"}))

    def assert_complete(self, job_id: str, files: int) -> None:
        """Every file done; every segment done with exactly one result row; no result without a segment."""
        body = self.http.get(f"/v1/jobs/{job_id}").json()
        assert body["state"] == "done" and body["files_done"] == files and body["files_failed"] == 0, body
        with self.db.connect() as conn:
            states = Counter(conn.scalars(text("SELECT state FROM files WHERE job_id = :j"), {"j": job_id}))
            counts = conn.execute(text(
                "SELECT s.id, s.state, COUNT(r.segment_id) FROM segments s LEFT JOIN results r "
                "ON r.segment_id = s.id WHERE s.job_id = :j GROUP BY s.id, s.state"), {"j": job_id}).all()
            orphans = conn.scalar(text("SELECT COUNT(*) FROM results WHERE job_id = :j AND segment_id NOT IN "
                                       "(SELECT id FROM segments WHERE job_id = :j)"), {"j": job_id})
        assert states == {"done": files}, states
        assert len(counts) > 10, f"only {len(counts)} segments: too few to test sharing"
        wrong = [c for c in counts if c[1] != "done" or c[2] != 1]
        assert not wrong, f"segments without exactly one result: {wrong[:10]}"
        assert orphans == 0

    def is_ready(self, name: str, not_pid: int | None = None) -> bool:
        """The worker `name` runs (a process other than `not_pid`) and says `ready` on its heartbeat."""
        from shared import heartbeat

        proc = self.stack.children[name].proc
        if proc.poll() is not None or proc.pid == not_pid:
            return False
        states = {b.get("state") for b in heartbeat.alive(self.stack.settings) if b.get("pid") == proc.pid}
        assert "error" not in states, f"{name} cannot start{self.logs()}"
        return "ready" in states

    def ready(self, name: str, not_pid: int | None = None, timeout: float = 420) -> int:
        """Until the worker `name` (a process other than `not_pid`) says `ready` on its heartbeat; its pid."""
        from shared import heartbeat

        deadline = time.monotonic() + timeout
        beats: list[dict] = []
        while time.monotonic() < deadline:
            self.stack.supervise_once()
            proc = self.stack.children[name].proc
            if proc.poll() is None and proc.pid != not_pid:
                beats = heartbeat.alive(self.stack.settings)
                states = {b.get("state") for b in beats if b.get("pid") == proc.pid}
                if "ready" in states:
                    return proc.pid
                assert "error" not in states, f"{name} cannot start: {beats}"
            time.sleep(0.2)
        raise AssertionError(f"{name} was not ready within {timeout:.0f} s: {beats}{self.logs()}")

    def logs(self) -> str:
        return "".join(f"\n--- {c.log.name}\n{c.log.read_text(errors='replace')[-3000:]}"
                       for c in self.stack.children.values())


@pytest.fixture(scope="module")
def shared(database_url, redis_url, models_dir, tmp_path_factory):
    from api.stack import Stack
    from shared.config import Settings

    data = tmp_path_factory.mktemp("data")
    steer = tmp_path_factory.mktemp("steer")
    broker = redis_url.rsplit("/", 1)[0] + ("/5" if database_url.startswith("sqlite") else "/6")
    redis.Redis.from_url(broker).flushdb()
    env = {
        "SPEECHQ_DATA_DIR": str(data), "DATABASE_URL": database_url, "REDIS_URL": broker,
        "SPEECHQ_MODELS_DIR": str(models_dir), "SPEECHQ_API_PORT": str(free_port()),
        # many small batches to share (a batch must hold the longest segment)
        "SPEECHQ_BATCH_SECONDS": "6", "SPEECHQ_MAX_SEGMENT_SECONDS": "6", "SPEECHQ_BATCH_FLUSH_SECONDS": "1",
        "SPEECHQ_TASK_DEADLINE_SECONDS": str(DEADLINE), "SPEECHQ_RECONCILE_INTERVAL_SECONDS": str(INTERVAL),
    }
    with mock.patch.dict(os.environ, env):
        stack = Stack(Settings(), flower=False, ingest_concurrency=2)
        try:
            stack.start()
            first = stack.children["gpu-cpu"].spec
            argv = list(first.argv)
            argv[argv.index("-n") + 1] = f"{SECOND}@%h"
            # the chaos suite's gate, in this worker only: it can be stopped holding a batch (hold-gpu)
            stack.spawn(replace(first, name=SECOND, argv=argv + ["--include", "tests.chaos.hooks"],
                                env={**first.env, "SPEECHQ_CHAOS_DIR": str(steer)}))
            client = Shared(stack, database_url)
            client.steer = steer
            client.ready("gpu-cpu")
            client.ready(SECOND)
            yield client
        finally:
            stack.stop()


def test_both_workers_take_batches_and_none_runs_twice(shared, tmp_path):
    job = shared.submit(write_calls(tmp_path, 24, seed=170))
    shared.wait(job)
    shared.assert_complete(job, 24)
    batches = shared.batches(job)
    runs = shared.batch_runs()
    assert len(batches) >= 4, f"only {len(batches)} batches: too few to share"
    assert all(state == "done" for state, _, _ in batches.values()), batches
    mine = {name: {b for b in counter if b in batches} for name, counter in runs.items()}
    assert mine["gpu-cpu"] and mine[SECOND], f"one worker took every batch: {mine}"
    assert not mine["gpu-cpu"] & mine[SECOND], "a batch ran on both workers"
    total = runs["gpu-cpu"] + runs[SECOND]
    assert {b: total[b] for b in batches} == {b: 1 for b in batches}, "a batch ran other than exactly once"
    assert {b: a for b, (_, a, _) in batches.items()} == {b: 1 for b in batches}, "a batch was claimed twice"
    log.info("%d batches: %d on gpu-cpu, %d on %s", len(batches), len(mine["gpu-cpu"]), len(mine[SECOND]), SECOND)


def test_a_worker_killed_holding_a_batch_loses_and_doubles_nothing(shared, tmp_path, record_property):
    before = shared.batch_runs()
    hold = shared.steer / "hold-gpu"
    hold.touch()
    try:
        job = shared.submit(write_calls(tmp_path, 24, seed=171))
        at = None
        deadline = time.monotonic() + 240
        while at is None and time.monotonic() < deadline:
            at = next(iter(shared.steer.glob("at-gpu-*")), None)
            shared.stack.supervise_once()
            time.sleep(0.1)
        assert at is not None, f"{SECOND} never reached the gate{shared.logs()}"
        victim = int(at.name.rsplit("-", 1)[1])
        assert victim == shared.stack.children[SECOND].proc.pid
        process = psutil.Process(victim)
        process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        gone(process)  # after this nothing of it writes: what it holds is final
        held = shared.running_on(SECOND)  # what it had claimed when it died
        assert held, "the second worker held no running batch"
    finally:
        hold.unlink(missing_ok=True)
        for stale in shared.steer.glob("at-gpu-*"):
            stale.unlink()
    # one loop watches the three ends of the recovery, whichever comes first
    ready_s = rerun_s = done_s = None
    while done_s is None or ready_s is None or rerun_s is None:  # the job may end between two of these checks
        elapsed = time.monotonic() - killed_at
        assert elapsed < DEADLINE + 420, f"no recovery after {elapsed:.0f} s{shared.logs()}"
        shared.stack.supervise_once()
        if ready_s is None and shared.is_ready(SECOND, not_pid=victim):
            ready_s = elapsed
        if rerun_s is None and all(shared.batches(job).get(b, ("gone",))[0] == "done" for b in held):
            rerun_s = elapsed
        if done_s is None and shared.http.get(f"/v1/jobs/{job}").json()["state"] in ("done", "failed", "cancelled"):
            done_s = elapsed
        time.sleep(0.2)
    back = shared.stack.children[SECOND].proc.pid

    shared.assert_complete(job, 24)
    batches = shared.batches(job)
    assert held <= batches.keys(), (held, batches)
    runs = shared.batch_runs()
    total = (runs["gpu-cpu"] - before["gpu-cpu"]) + (runs[SECOND] - before[SECOND])
    assert {b: total[b] for b in batches} == {b: 1 for b in batches}, "a batch ran other than exactly once"
    assert all(state == "done" for state, _, _ in batches.values()), batches
    # the batches the dead worker held were claimed once more (taken over after the deadline), no other one
    attempts = {b: a for b, (_, a, _) in batches.items()}
    assert attempts == {b: 2 if b in held else 1 for b in batches}, attempts
    assert back != victim and shared.stack.children[SECOND].restarts, "the supervisor did not restart it"
    for name, value in (("recovery_worker_ready_s", ready_s), ("recovery_held_batches_done_s", rerun_s),
                        ("recovery_job_done_s", done_s)):
        record_property(name, round(value, 1))
    log.info("SIGKILL of %s holding %d batch(es): its held batches done after %.1f s (deadline %d s, reconcile "
             "every %d s), the job done after %.1f s, the worker back and ready after %.1f s; %d batches, none run "
             "twice", SECOND, len(held), rerun_s, DEADLINE, INTERVAL, done_s, ready_s, len(batches))
