"""`speechq up` never fails silently: it refuses to start on a broken precondition, stops a process that
keeps crashing, stops everything on SIGTERM, leaves no process when it is SIGKILLed, and a GPU worker
that cannot load its models puts that error on the job."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from unittest import mock

import httpx
import pytest

from api import preflight
from shared import samples
from tests.conftest import free_port, need_espeak
from tests.e2e.conftest import still_running, workers_alive

pytestmark = pytest.mark.e2e


def test_up_refuses_to_start_without_models_and_says_how_to_fix_it(up_env, start_up, tmp_path):
    up_env["SPEECHQ_MODELS_DIR"] = str(tmp_path / "no-models")
    up = start_up(up_env)
    assert up.proc.wait(timeout=120) == 1
    out = up.output()
    assert f"no model folder at {tmp_path / 'no-models' / 'SenseVoiceSmall'}" in out
    assert "fix: speechq models pull --model sensevoice" in out and "speechq models init-random" in out
    assert "speechq did not start" in out and "speechq is up" not in out
    assert not (tmp_path / "data" / "logs").exists(), "nothing was started"


def test_up_refuses_a_port_in_use(up_env, start_up):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up_env["SPEECHQ_FLOWER_PORT"] = str(port)
        up = start_up(up_env)
        assert up.proc.wait(timeout=120) == 1
    out = up.output()
    assert f"Flower port: 127.0.0.1:{port} is in use by another process" in out
    assert "fix: SPEECHQ_FLOWER_PORT=<a free port> speechq up" in out


def test_a_process_that_keeps_crashing_stops_the_stack(tmp_path):
    from api.stack import RestartBudget, Stack, StackFailed
    from shared.config import Settings
    from api.launcher import Proc

    stack = Stack(Settings(data_dir=tmp_path), budget=RestartBudget(limit=3, window=60, first_delay=0.1))
    stack.log_dir.mkdir(parents=True)
    crash = "import sys; print('[Errno 98] address already in use'); sys.exit(3)"
    stack.spawn(Proc("api", [sys.executable, "-c", crash]))
    started = time.monotonic()
    try:
        with pytest.raises(StackFailed) as failed:
            while time.monotonic() - started < 30:
                stack.supervise_once()
                time.sleep(0.05)
    finally:
        stack.stop()
    message = str(failed.value)
    assert "api exited with 3 and was restarted 3 times within 60 s" in message
    assert str(tmp_path / "logs" / "api.log") in message and "address already in use" in message
    assert (tmp_path / "logs" / "api.log").read_text().count("---- speechq: starting api") == 4
    assert time.monotonic() - started >= 0.1 + 0.2 + 0.4, "restarts back off"


def test_sigint_is_handled_even_when_the_shell_ignores_it():
    """A shell starts a background job with SIGINT ignored; `up` installs its handlers explicitly."""
    code = textwrap.dedent("""
        import time
        from api.stack import stop_on_signals
        with stop_on_signals():
            try:
                print("ready", flush=True)
                time.sleep(60)
            except KeyboardInterrupt:
                print("stopping", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0 and proc.stdout.read().strip() == "stopping"


def test_sigterm_stops_everything(up_env, start_up):
    up = start_up(up_env, ignore_sigint=True)  # as a shell starts a background job
    up.health(workers_alive)
    tree = up.tree()
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "valkey-server" in names and "uvicorn" in names and "flower" in names and "-B" in names
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=60) == 0, up.output()
    assert "stopping" in up.output() and "stack stopped" in up.output()
    assert not still_running(tree)
    for env in ("SPEECHQ_API_PORT", "SPEECHQ_FLOWER_PORT", "SPEECHQ_EMBEDDED_REDIS_PORT"):  # nothing listens there
        assert preflight.port_free(env, "127.0.0.1", int(up_env[env]), env).ok


def test_sigkill_of_the_supervisor_leaves_no_process(up_env, start_up):
    up = start_up(up_env)
    up.health(workers_alive)
    tree = up.tree()
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "valkey-server" in names and "uvicorn" in names and "flower" in names and "-B" in names
    up.proc.send_signal(signal.SIGKILL)
    up.proc.wait()
    deadline = time.monotonic() + 20
    while still_running(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not still_running(tree), [p.cmdline() for p in still_running(tree)]


def test_a_gpu_worker_that_cannot_load_its_models_fails_the_job_with_that_error(models_dir, tmp_path):
    need_espeak()
    from api.stack import Stack
    from shared.config import Settings

    broken = tmp_path / "models"
    shutil.copytree(models_dir, broken)
    (broken / "SenseVoiceSmall" / "model.pt").write_bytes(b"not a checkpoint" * 64)
    env = {"SPEECHQ_DATA_DIR": str(tmp_path / "data"), "SPEECHQ_MODELS_DIR": str(broken),
           "SPEECHQ_API_PORT": str(free_port()), "SPEECHQ_EMBEDDED_REDIS_PORT": str(free_port()),
           "SPEECHQ_BATCH_FLUSH_SECONDS": "2", "SPEECHQ_RECONCILE_INTERVAL_SECONDS": "5"}
    call = samples.stereo_g711_call(tmp_path / "call.wav")
    with mock.patch.dict(os.environ, env):
        os.environ.pop("REDIS_URL", None)
        os.environ.pop("DATABASE_URL", None)
        stack = Stack(Settings(), flower=False, ingest_concurrency=1)
        try:
            stack.start()
            http = httpx.Client(base_url=stack.api_url, timeout=60)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                health = http.get("/v1/health").json()
                gpu = health["workers"]["gpu"]
                if gpu and gpu[0]["state"] == "error":
                    break
                stack.supervise_once()
                time.sleep(0.5)
            assert health["status"] == "degraded" and "no GPU worker is ready" in health["reason"]
            assert "cannot load its models" in gpu[0]["error"] and "SenseVoiceSmall" in gpu[0]["error"]
            r = http.post("/v1/jobs", files=[("files", (call.name, call.read_bytes()))])
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            while time.monotonic() < deadline:
                job = http.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in ("done", "failed", "cancelled"):
                    break
                stack.supervise_once()
                time.sleep(0.5)
        finally:
            stack.stop()
    assert job["state"] == "failed", job
    assert job["error"].startswith("GPU worker gpu-cpu@") and "cannot load its models" in job["error"]
    assert str(broken / "SenseVoiceSmall") in job["error"]
    assert job["errors"] and "cannot load its models" in job["errors"][0]["error"]


def test_heartbeats_say_who_is_alive_and_expire(redis_url, tmp_path, monkeypatch):
    from shared import heartbeat
    from shared.config import Settings

    settings = Settings(data_dir=tmp_path, redis_url=redis_url.rsplit("/", 1)[0] + "/5")
    models = [{"name": "iic/SenseVoiceSmall", "sha256": "ab" * 32, "random_weights": True}]
    heartbeat.beat(settings, "gpu", "gpu0@test", {"pid": 12, "state": "ready", "models": models})
    heartbeat.beat(settings, "ingest", "ingest@test", {"state": "ready"})
    (gpu, ingest) = sorted(heartbeat.alive(settings), key=lambda w: w["role"] != "gpu")
    assert gpu == {"hostname": "gpu0@test", "role": "gpu", "pid": 12, "state": "ready", "error": None,
                   "models": models, "seen_at": gpu["seen_at"]}
    assert gpu["seen_at"].endswith("+00:00") and ingest["pid"] == os.getpid() and ingest["models"] == []
    heartbeat.forget(settings, "ingest@test")
    assert [w["hostname"] for w in heartbeat.alive(settings)] == ["gpu0@test"]
    monkeypatch.setattr(heartbeat, "TTL", 1)
    heartbeat.beat(settings, "gpu", "gpu0@test", {"state": "error", "error": "cannot load"})
    time.sleep(1.5)
    assert heartbeat.alive(settings) == []


def test_workers_not_started_by_the_stack_are_refused(redis_url, tmp_path):
    from api.stack import Stack, StackFailed
    from shared import heartbeat
    from shared.config import Settings

    settings = Settings(data_dir=tmp_path, redis_url=redis_url.rsplit("/", 1)[0] + "/6")
    stray = f"gpu0@{socket.gethostname()}"
    heartbeat.beat(settings, "gpu", stray, {"pid": os.getpid()})  # a live process on this host
    heartbeat.beat(settings, "gpu", "gpu1@elsewhere", {"pid": os.getpid()})  # another host's worker is welcome
    stack = Stack(settings, flower=False)
    try:
        with pytest.raises(StackFailed) as refused:
            stack.start()
    finally:
        stack.stop()
        heartbeat.forget(settings, stray)
        heartbeat.forget(settings, "gpu1@elsewhere")
    assert str(refused.value) == (f"workers not started by this stack are consuming from its broker: {stray} "
                                  f"(pid {os.getpid()}); stop them (kill {os.getpid()}) and start again")
    assert not stack.children, "nothing was started"
