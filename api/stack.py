"""`speechq up`: the whole stack on one machine, supervised; Ctrl-C or SIGTERM stops all of it.

Every child runs in its own session (a terminal's Ctrl-C reaches only the supervisor, which then
stops the children) and asks the kernel for SIGKILL when the supervisor dies (PR_SET_PDEATHSIG), so
that no child outlives it, even a SIGKILLed one, and joins the next stack's broker. A child that
exits is restarted after a growing delay; one that keeps exiting stops the stack (StackFailed).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from shared import broker, heartbeat
from shared.config import Settings
from shared.db import migrate
from api import launcher
from shared.orphans import die_with_parent

log = logging.getLogger(__name__)


class StackFailed(RuntimeError):
    """The stack cannot go on: a process keeps exiting, or did not start."""


@dataclass(frozen=True)
class RestartBudget:
    """At most `limit` restarts of one process within `window` seconds, each after a growing delay."""
    limit: int = 5
    window: float = 300.0
    first_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, recent: int) -> float:
        return min(self.first_delay * 2 ** recent, self.max_delay)


@dataclass
class Child:
    spec: launcher.Proc
    proc: subprocess.Popen
    log: Path
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent restarts
    due: float | None = None  # when a scheduled restart happens


class Stack:
    def __init__(self, settings: Settings, gpus: str | None = None, flower: bool = True,
                 ingest_concurrency: int | None = None, log_dir: Path | None = None,
                 budget: RestartBudget = RestartBudget()):
        self.settings = settings
        self.gpus = gpus
        self.flower = flower
        self.ingest_concurrency = (ingest_concurrency or settings.ingest_processes
                                   or max(1, (os.cpu_count() or 2) - 1))
        self.log_dir = Path(log_dir or settings.data_dir / "logs").resolve()
        self.budget = budget
        self.children: dict[str, Child] = {}
        self.env: dict[str, str] = {}
        self._workers: dict[str, tuple[str, str | None]] = {}  # hostname -> (state, error) last logged

    def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {"SPEECHQ_DATA_DIR": str(s.data_dir.resolve())}
        if not s.redis_url:
            url = f"redis://127.0.0.1:{s.embedded_redis_port}/0"
            valkey = self.spawn(launcher.valkey(s.embedded_redis_port, s.data_dir / "redis"))
            try:
                broker.wait_ready(url, alive=lambda: valkey.proc.poll() is None)
            except RuntimeError as exc:
                raise StackFailed(f"{exc}; see {valkey.log}") from exc
            log.info("embedded Valkey on %s (data in %s)", url, (s.data_dir / "redis").resolve())
            self.env["REDIS_URL"] = url
        self.refuse_strays()
        migrate(s.database)
        specs = [launcher.api(s.api_host, s.api_port), launcher.ingest_worker(self.ingest_concurrency),
                 launcher.housekeeping_worker()]
        specs += launcher.gpu_workers(self.gpus or s.gpu_devices, prefetch=s.gpu_prefetch)
        if self.flower:
            specs.append(launcher.flower(s.flower_port, launcher.flower_credentials(s)[0]))
        for spec in specs:
            self.spawn(spec)
        self.wait_api()

    def refuse_strays(self) -> None:
        """Workers of this host already on the broker were not started by this stack (an earlier stack's
        orphans, or started by hand): they would take its work, maybe with other code. Refuse to start."""
        node = socket.gethostname()
        try:
            strays = [w for w in heartbeat.alive(self.settings)
                      if str(w.get("hostname", "")).endswith("@" + node) and _pid_alive(w.get("pid"))]
        except Exception as exc:  # noqa: BLE001 - the workers' own heartbeats will say more
            log.warning("cannot read worker heartbeats: %s", exc)
            return
        if strays:
            found = ", ".join(f"{w['hostname']} (pid {w['pid']})" for w in strays)
            pids = " ".join(str(w["pid"]) for w in strays)
            raise StackFailed(f"workers not started by this stack are consuming from its broker: {found}; "
                              f"stop them (kill {pids}) and start again")

    def spawn(self, spec: launcher.Proc) -> Child:
        """Start `spec` with its output appended to its log file. Call from the thread that supervises:
        the kernel's parent-death signal follows the thread that started the child."""
        path = self.log_dir / f"{spec.name}.log"
        with open(path, "ab") as out:
            out.write(f"---- speechq: starting {spec.name} at {datetime.now().isoformat(timespec='seconds')}\n"
                      .encode())
            out.flush()
            proc = subprocess.Popen(spec.argv, env={**os.environ, **self.env, **spec.env}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=functools.partial(die_with_parent, os.getpid()))
        child = self.children.get(spec.name)
        if child is None:
            child = self.children[spec.name] = Child(spec, proc, path)
        child.proc, child.due = proc, None
        log.info("started %s (pid %d), log %s", spec.name, proc.pid, path)
        return child

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def wait_api(self, timeout: float = 120) -> None:
        api = self.children["api"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if api.proc.poll() is not None:
                raise StackFailed(f"the API exited with {api.proc.returncode} during start{_tail(api.log)}\n"
                                  f"(log: {api.log})")
            try:
                if httpx.get(f"{self.api_url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise StackFailed(f"the API did not answer within {timeout:.0f} s; see {api.log}")

    def supervise_once(self) -> None:
        """Restart a process that exited (a GPU worker exits on a CUDA error by design, and runs its batches
        in its own process, so any crash of it lands here), after a delay that
        grows with each restart; raise StackFailed when one exits more often than the budget allows."""
        now = time.monotonic()
        b = self.budget
        for name, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            if child.due is None:
                child.restarts = [t for t in child.restarts if now - t < b.window]
                if len(child.restarts) >= b.limit:
                    raise StackFailed(f"{name} {_exit(code)} and was restarted {b.limit} times within "
                                      f"{b.window:.0f} s; stopping the stack. Its log: {child.log}{_tail(child.log)}")
                delay = b.delay(len(child.restarts))
                child.due = now + delay
                log.warning("%s (pid %d) %s; restarting in %.0f s (restart %d of at most %d within %.0f s); log %s",
                            name, child.proc.pid, _exit(code), delay, len(child.restarts) + 1, b.limit, b.window,
                            child.log)
            elif now >= child.due:
                child.restarts.append(now)
                self.spawn(child.spec)

    def watch_workers(self) -> None:
        """Log each worker's state as its heartbeat changes: a GPU worker that cannot load its models is
        an error in this output, not only in its own log."""
        try:
            workers = {w["hostname"]: w for w in heartbeat.alive(self.settings)}
        except Exception as exc:  # noqa: BLE001 - the broker's own process is supervised above
            log.warning("cannot read worker heartbeats: %s", exc)
            return
        for hostname, w in workers.items():
            now = (w.get("state"), w.get("error"))
            if self._workers.get(hostname) == now:
                continue
            self._workers[hostname] = now
            logfile = self.log_dir / f"{hostname.split('@')[0]}.log"
            if w.get("state") == "error":
                log.error("%s: %s (log %s)", hostname, w.get("error"), logfile)
            elif w.get("state") == "ready" and w.get("models"):
                models = ", ".join(m["name"] + (" (RANDOM weights)" if m.get("random_weights") else "")
                                   for m in w["models"])
                log.info("%s ready: %s", hostname, models)
            else:
                log.info("%s %s", hostname, w.get("state"))
        for hostname in set(self._workers) - set(workers):
            log.warning("%s stopped sending heartbeats", hostname)
            del self._workers[hostname]

    def run_forever(self, interval: float = 1.0) -> None:
        ticks = 0
        while True:
            time.sleep(interval)
            self.supervise_once()
            if ticks % max(1, int(heartbeat.INTERVAL / interval)) == 0:
                self.watch_workers()
            ticks += 1

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to every process group, the broker last; SIGKILL to what is left after `grace` seconds."""
        broker_child = self.children.pop("valkey", None)
        _terminate(list(self.children.values()), grace)
        if broker_child is not None:
            _terminate([broker_child], 10.0)
        self.children.clear()
        log.info("stack stopped")


def _terminate(children: list[Child], grace: float) -> None:
    for child in children:
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not stop within %.0f s: killing it", child.spec.name, child.proc.pid, grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  " + "\n  ".join(text) if text else ""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, once; a second one while the stack
    stops is logged and ignored. Installed explicitly: a shell starts background jobs with SIGINT ignored."""
    fired = False

    def handler(signum, _frame):
        nonlocal fired
        name = signal.Signals(signum).name
        if fired:
            log.warning("%s received while stopping; still stopping", name)
            return
        fired = True
        log.info("%s received: stopping the stack", name)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
