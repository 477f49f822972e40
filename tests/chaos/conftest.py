"""Real processes the chaos suite can break: a PostgreSQL cluster it starts itself (initdb/pg_ctl, so it can
restart it), a Valkey it can SIGKILL, and the speechq stack (api.stack.Stack: API, ingest, housekeeping and
gpu-queue workers) with short deadlines, its workers steered through tests/chaos/hooks.py."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from unittest import mock

import httpx
import psutil
import pytest
import redis
from sqlalchemy import create_engine, text

from shared.orphans import die_with_parent
from tests.conftest import free_port

DEADLINE = 20.0  # SPEECHQ_TASK_DEADLINE_SECONDS: work claimed this long ago by a dead worker is taken over
INTERVAL = 3.0  # SPEECHQ_RECONCILE_INTERVAL_SECONDS
RECOVERY = DEADLINE + 60.0  # the bound on a job's end after a fault that costs one attempt (the issue's)
HOOKS = "tests.chaos.hooks"


def postgres_binary(name: str) -> str:
    """initdb or pg_ctl on PATH, else from Debian's postgresql package (/usr/lib/postgresql/N/bin)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"{name} not found: `deploy/install.sh --test` installs postgresql")
        pytest.skip(f"{name} not found (install Debian's postgresql: deploy/install.sh --test)")
    return found


class Postgres:
    """A throw-away cluster on a free port, run as the `postgres` user when the tests run as root."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="speechq-chaos-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run(postgres_binary("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        self.start()
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE speechq"))
        admin.dispose()

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/speechq"

    def _run(self, *argv: str) -> None:
        user = self.user

        def demote() -> None:
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        env = {**os.environ, "HOME": str(self.root)}
        done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=demote, env=env, cwd=self.root)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                   "-c max_connections=200")
        self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t",
                  "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_seconds: float = 2.0) -> None:
        """As a crash and a restart: every connection is cut, nothing is shut down cleanly."""
        self.stop("immediate")
        time.sleep(down_seconds)
        self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class Broker:
    """valkey-server as speechq runs it (shared.broker.command), with or without its append-only file."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start(appendonly=True)

    def start(self, appendonly: bool) -> None:
        from shared.broker import command, wait_ready

        argv = command(self.port, self.root)
        argv[argv.index("--appendonly") + 1] = "yes" if appendonly else "no"
        pid = os.getpid()
        with open(self.root / "valkey.log", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=lambda: die_with_parent(pid))
        wait_ready(self.url, alive=lambda: self.proc.poll() is None)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def persist(self, appendonly: bool) -> None:
        redis.Redis.from_url(self.url).config_set("appendonly", "yes" if appendonly else "no")


class Chaos:
    """The stack under test, the means to break it, and the checks that every row ended right."""

    def __init__(self, stack, pg: Postgres | None, broker: Broker, database_url: str, steer: Path,
                 calls: list[Path]):
        self.stack, self.pg, self.broker, self.database_url = stack, pg, broker, database_url
        self.steer, self.calls = steer, calls
        self.http = httpx.Client(base_url=stack.api_url, timeout=60)
        self.notes: list[str] = []  # what the test saw, for its failure message
        self.db = create_engine(database_url, pool_pre_ping=True)  # the test restarts PostgreSQL

    # -- faults --------------------------------------------------------------------------------------------
    def hold(self, where: str, job_id: str = "") -> None:
        """Hold the tasks that reach the gate `where` (only the job `job_id`'s files at the ingest gate)."""
        for old in self.steer.glob(f"at-{where}-*"):
            old.unlink()
        (self.steer / f"hold-{where}").write_text(job_id)

    def release(self, where: str) -> None:
        (self.steer / f"hold-{where}").unlink(missing_ok=True)

    def held(self, where: str, timeout: float = 300) -> int:
        """Wait until a process waits at the gate; its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = sorted(self.steer.glob(f"at-{where}-*"))
            if found:
                return int(found[0].name.rsplit("-", 1)[1])
            self.stack.supervise_once()
            time.sleep(0.2)
        raise AssertionError(f"nothing reached the {where} gate within {timeout:.0f} s{self.logs()}")

    def worker_pid(self, name: str) -> int:
        return self.stack.children[name].proc.pid

    def sigkill(self, pid: int) -> None:
        """SIGKILL, and wait until the process is gone (a zombie until its parent reaps it)."""
        process = psutil.Process(pid)
        process.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if process.status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)
        raise AssertionError(f"pid {pid} survived SIGKILL for 30 s")

    def back(self, name: str, killed: int, timeout: float = 300) -> None:
        """Until the supervisor has started the worker `name` again (the test drives its loop) and its new
        process says it is ready on its heartbeat (a GPU worker: models loaded). A worker's start (imports,
        models) adds to any recovery that needs it, and varies with the machine, so bounds start here."""
        from shared import heartbeat

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stack.supervise_once()
            proc = self.stack.children[name].proc
            if proc.poll() is None and proc.pid != killed:
                beats = heartbeat.alive(self.stack.settings)
                if any(b.get("pid") == proc.pid and b.get("state") == "ready" for b in beats):
                    self.notes.append(f"{name} (pid {proc.pid}) back at {time.strftime('%H:%M:%S')}: {beats}")
                    return
            time.sleep(0.3)
        raise AssertionError(f"{name} was not back within {timeout:.0f} s{self.logs()}")

    def ready(self, timeout: float = 600) -> None:
        """Until the ingest and GPU workers say they are ready and no job is left from an earlier test (one
        still running after `timeout` is cancelled, so that each test starts from a quiet stack)."""
        from shared import heartbeat

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stack.supervise_once()
            beats = {b.get("role"): b.get("state") for b in heartbeat.alive(self.stack.settings)}
            with self.db.connect() as conn:
                busy = conn.scalars(text("SELECT id FROM jobs WHERE state IN ('queued', 'running')")).all()
            if beats.get("gpu") == "ready" and beats.get("ingest") == "ready" and not busy:
                return
            time.sleep(0.5)
        for job_id in busy:
            self.http.post(f"/v1/jobs/{job_id}/cancel")

    # -- work ----------------------------------------------------------------------------------------------
    def submit(self, paths: list[Path]) -> str:
        files = [("files", (p.name, p.read_bytes())) for p in paths]
        r = self.http.post("/v1/jobs", files=files)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def wait(self, job_id: str, bound: float) -> dict:
        """The job's status once it has ended; fails if it takes longer than `bound` seconds from now."""
        deadline = time.monotonic() + bound
        body = None
        while time.monotonic() < deadline:
            try:
                body = self.http.get(f"/v1/jobs/{job_id}").json()
                if body["state"] in ("done", "failed", "cancelled"):
                    return body
            except httpx.HTTPError:
                pass  # the API itself may be waiting for the database
            self.stack.supervise_once()
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not end within {bound:.0f} s: {body}{self.logs()}")

    def assert_ended_right(self, job_id: str, failed: dict[str, str] | None = None) -> None:
        """Every segment has exactly one result; no file failed but those in `failed` (name: words in the
        error); nothing of the job is left on the spool."""
        failed = failed or {}
        with self.db.connect() as conn:
            files = conn.execute(text("SELECT name, state, error FROM files WHERE job_id = :j"), {"j": job_id}).all()
            segments = conn.execute(text(
                "SELECT s.id, s.state, s.batch_id, COUNT(r.segment_id) FROM segments s "
                "LEFT JOIN results r ON r.segment_id = s.id WHERE s.job_id = :j GROUP BY s.id, s.state, s.batch_id"),
                {"j": job_id}).all()
            extra = conn.scalar(text("SELECT COUNT(*) FROM results WHERE job_id = :j AND segment_id NOT IN "
                                     "(SELECT id FROM segments WHERE job_id = :j)"), {"j": job_id})
        by_name = {f.name: f for f in files}
        for name, words in failed.items():
            assert by_name[name].state == "failed" and words in (by_name[name].error or ""), by_name[name]
        wrong = [f for f in files if f.name not in failed and f.state != "done"]
        assert not wrong, f"files wrongly not done: {wrong}"
        expected = [f for f in files if f.name not in failed]
        assert segments and expected, "the job has no segments: nothing was tested"
        assert all(s.state == "done" and s[3] == 1 for s in segments), [s for s in segments if s[3] != 1]
        assert extra == 0
        # The worker removes its files just after the commit that the API already shows: a moment's grace.
        spool, batches = self.stack.settings.spool, {s.batch_id for s in segments}
        deadline = time.monotonic() + 10
        while True:
            left = [p for p in (spool / "uploads" / job_id, spool / "audio" / job_id) if p.exists()]
            left += [p for p in (spool / "batches").glob("*") if p.name.split(".", 1)[0] in batches]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not left, f"left on the spool: {left}"

    def logs(self) -> str:
        return "\n" + "\n".join(self.notes) + "\n" + "\n".join(f"==== {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                                for p in sorted(self.stack.log_dir.glob("*.log")))


def _with_hooks(fn):
    def wrapper(*args, **kwargs):
        made = fn(*args, **kwargs)
        for proc in made if isinstance(made, list) else [made]:
            proc.argv += ["--include", HOOKS]
        return made
    return wrapper


@pytest.fixture(scope="module")
def calls(tmp_path_factory) -> list[Path]:
    """Four short synthesised calls (espeak-ng), one group of the ingest queue."""
    from shared import samples

    if not samples.have_espeak():
        pytest.skip("espeak-ng is not installed (deploy/install.sh --test installs it)")
    root = tmp_path_factory.mktemp("calls")
    lines = ["Thank you for calling, how can I help?", "My card was charged twice this month.",
             "I am sorry, let me check that for you.", "The refund is on its way, goodbye."]
    return [samples.mono_call(root / f"call{i}.wav", [(0, line)]) for i, line in enumerate(lines)]


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def chaos_stack(request, models_dir, calls, tmp_path_factory):
    from api import launcher
    from api.stack import RestartBudget, Stack
    from shared.config import Settings

    root = tmp_path_factory.mktemp("chaos")
    pg = Postgres() if request.param == "postgresql" else None
    broker = None
    try:
        broker = Broker(root / "valkey")
        database_url = pg.url if pg else f"sqlite:///{root / 'speechq.db'}"
        steer = root / "steer"
        steer.mkdir()
        env = {
            "SPEECHQ_DATA_DIR": str(root / "data"), "DATABASE_URL": database_url, "REDIS_URL": broker.url,
            "SPEECHQ_MODELS_DIR": str(models_dir), "SPEECHQ_API_PORT": str(free_port()),
            "SPEECHQ_TASK_DEADLINE_SECONDS": str(DEADLINE), "SPEECHQ_RECONCILE_INTERVAL_SECONDS": str(INTERVAL),
            "SPEECHQ_BATCH_SECONDS": "60", "SPEECHQ_BATCH_FLUSH_SECONDS": "1", "SPEECHQ_INGEST_GROUP_FILES": "4",
            "SPEECHQ_CHAOS_DIR": str(steer),
        }
        with mock.patch.dict(os.environ, env), \
                mock.patch.object(launcher, "ingest_worker", _with_hooks(launcher.ingest_worker)), \
                mock.patch.object(launcher, "gpu_workers", _with_hooks(launcher.gpu_workers)):
            stack = Stack(Settings(), flower=False, ingest_concurrency=1,
                          budget=RestartBudget(limit=20, first_delay=0.5, max_delay=2))
            try:
                stack.start()
                yield Chaos(stack, pg, broker, database_url, steer, calls)
                for hold in steer.glob("hold-*"):
                    hold.unlink()
            finally:
                for hold in steer.glob("hold-*"):
                    hold.unlink()
                stack.stop()
    finally:
        if broker is not None and broker.proc.poll() is None:
            broker.kill()
        if pg is not None:
            pg.destroy()


def children_of(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children()]


@pytest.fixture
def chaos(chaos_stack):
    """The chaos stack, its workers ready and no job of an earlier test left."""
    chaos_stack.ready()
    return chaos_stack
