"""The command line against real processes: `speechq submit --wait`, and `speechq up` on embedded defaults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from shared import samples
from tests.conftest import free_port, need_espeak

pytestmark = pytest.mark.e2e
SPEECHQ = [sys.executable, "-m", "api.cli"]


def test_submit_wait_shows_progress_and_summary(api, tmp_path):
    need_espeak()
    call = samples.stereo_g711_call(tmp_path / "cli-call.wav")
    out = subprocess.run([*SPEECHQ, "submit", str(call), "--wait", "--api", api.url],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "done: files 1+0 failed/1" in out.stdout
    assert "RANDOM WEIGHTS" in out.stdout and "cli-call.wav done" in out.stdout
    assert "agent" in out.stdout and "customer" in out.stdout


def test_up_starts_embedded_stack_and_ctrl_c_stops_it(models_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    port = free_port()
    env.update(SPEECHQ_DATA_DIR=str(tmp_path), SPEECHQ_MODELS_DIR=str(models_dir), SPEECHQ_API_PORT=str(port),
               SPEECHQ_FLOWER_PORT=str(free_port()), SPEECHQ_EMBEDDED_REDIS_PORT=str(free_port()))
    proc = subprocess.Popen([*SPEECHQ, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json()
                if health.get("status") == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        assert health == {"status": "ok", "database": "ok", "broker": "ok"}
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "valkey-server" in names and "uvicorn" in names and "flower" in names
        assert "-Q ingest" in names and "-Q gpu" in names
        assert (tmp_path / "speechq.db").exists(), "SQLite under the data dir by default"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
