"""Issue 13: every crash survived with nothing lost, doubled or stuck. Each test breaks one real process at a
known point of a job (the gates of tests/chaos/hooks.py), lets the stack recover on its own, and checks that
every segment has exactly one result, no file failed wrongly, nothing is left on the spool, and the job
ended within the bound it states: a fault that costs one attempt is recovered within the task deadline plus
60 s (conftest.RECOVERY)."""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import DEADLINE, INTERVAL, RECOVERY, children_of
from tests.chaos.hooks import POISON

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.timeout(600)]


def _kill_at(chaos, where: str, pick) -> tuple[str, int]:
    """Submit the calls, hold the job at `where`, SIGKILL the process `pick(chaos, pid at the gate)` names,
    release the gate. Returns the job's id and the pid killed."""
    chaos.hold(where)
    try:
        job = chaos.submit(chaos.calls)
        killed = pick(chaos, chaos.held(where))
        chaos.sigkill(killed)
    finally:
        chaos.release(where)
    return job, killed


def test_gpu_worker_killed_mid_batch(chaos):
    """The GPU worker runs its batches in its own process (solo pool): killing it mid-batch, after the
    message was acked (write-behind) and before the results are stored, leaves the batch `running`; the
    supervisor restarts the worker and the reconciler hands the batch over after the deadline."""
    job, killed = _kill_at(chaos, "gpu", lambda c, pid: pid)
    chaos.back("gpu-cpu", killed)
    chaos.wait(job, RECOVERY)
    chaos.assert_ended_right(job)


def test_ingest_worker_parent_killed_mid_ingest(chaos):
    """Its pool children die with it (PR_SET_PDEATHSIG); the files it held are taken over after the deadline."""
    if chaos.pg is None:
        pytest.skip("the same takeover as the pool child's, which runs on SQLite too: PostgreSQL only (time)")
    job, killed = _kill_at(chaos, "ingest", lambda c, pid: c.worker_pid("ingest"))
    chaos.back("ingest", killed)
    chaos.wait(job, RECOVERY)
    chaos.assert_ended_right(job)


def test_ingest_worker_child_killed_mid_ingest(chaos):
    """The pool child that runs the task dies; its parent starts another, and the group comes back split."""
    def child(c, pid):
        assert pid in children_of(c.worker_pid("ingest"))
        return pid

    job, _ = _kill_at(chaos, "ingest", child)
    chaos.wait(job, RECOVERY)
    chaos.assert_ended_right(job)


def test_poison_file_fails_alone(chaos, tmp_path):
    """A file that kills the process probing it, grouped with healthy calls: the group is split, the healthy
    calls finish, and the poison file fails alone after its attempts, saying that its process died."""
    from shared.config import get_settings

    good = chaos.calls[:3]
    poison = tmp_path / "poison.wav"
    poison.write_bytes(good[0].read_bytes() + POISON)
    job = chaos.submit([*good, poison])
    attempts = get_settings().max_attempts
    bound = (attempts + 1) * (DEADLINE + INTERVAL) + 60
    st = chaos.wait(job, bound)
    assert st["state"] == "done" and st["files_failed"] == 1
    chaos.assert_ended_right(job, failed={"poison.wav": f"gave up after {attempts} attempts"})
    error = next(e["error"] for e in st["errors"] if e["name"].endswith("poison.wav"))
    assert "process died" in error


@pytest.mark.parametrize("appendonly", [True, False], ids=["aof", "no-persistence"])
def test_broker_killed_mid_ingest(chaos, appendonly):
    """Valkey SIGKILLed while a file is being ingested, then started again with its append-only file, or
    empty (every message lost): the rows say what is left and the reconciler sends it again."""
    if chaos.pg is None:
        pytest.skip("the broker's faults are the same whatever the database: run on PostgreSQL only")
    chaos.broker.persist(appendonly)
    chaos.hold("ingest")
    try:
        job = chaos.submit(chaos.calls)
        chaos.held("ingest")
        chaos.broker.kill()
        time.sleep(1)
        chaos.broker.start(appendonly=appendonly)
    finally:
        chaos.release("ingest")
    chaos.wait(job, RECOVERY)
    chaos.assert_ended_right(job)
    chaos.broker.persist(True)


@pytest.mark.parametrize("where", ["ingest", "gpu"])
def test_postgres_restarted(chaos, where):
    """PostgreSQL crashes and comes back while a file is ingested or a batch's results are about to be stored."""
    if chaos.pg is None:
        pytest.skip("restarting the database server applies to PostgreSQL")
    chaos.hold(where)
    try:
        job = chaos.submit(chaos.calls)
        chaos.held(where)
        chaos.pg.restart(down_seconds=2)
    finally:
        chaos.release(where)
    chaos.wait(job, RECOVERY)
    chaos.assert_ended_right(job)
