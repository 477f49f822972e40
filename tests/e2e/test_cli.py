"""The command line against real processes: `speechq submit --wait`, and `speechq up` on embedded defaults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shared import samples
from tests.conftest import need_espeak
from tests.e2e.conftest import still_running

pytestmark = pytest.mark.e2e
SPEECHQ = [sys.executable, "-m", "api.cli"]


def test_submit_wait_shows_progress_and_summary(api, tmp_path):
    need_espeak()
    call = samples.stereo_g711_call(tmp_path / "cli-call.wav")
    out = subprocess.run([*SPEECHQ, "submit", str(call), "--wait", "--api", api.url],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "done: files 1 done, 0 failed of 1, audio" in out.stdout
    assert "RANDOM WEIGHTS" in out.stdout and "cli-call.wav done" in out.stdout
    assert "agent" in out.stdout and "customer" in out.stdout


def test_up_starts_embedded_stack_and_ctrl_c_stops_it(up_env, start_up, tmp_path):
    up = start_up(up_env)
    health = up.health(lambda h: h.get("status") == "ok")
    assert health["database"] == "ok" and health["broker"] == "ok" and health["reason"] is None
    (ingest,) = health["workers"]["ingest"]
    (gpu,) = health["workers"]["gpu"]
    assert ingest["state"] == "ready" and ingest["models"] == []
    assert gpu["state"] == "ready" and gpu["error"] is None
    assert {m["name"] for m in gpu["models"]} == {"iic/SenseVoiceSmall", "iic/emotion2vec_plus_large"}
    assert all(m["random_weights"] and len(m["sha256"]) == 64 for m in gpu["models"])
    assert gpu["seen_at"].endswith("+00:00")
    children = up.tree()
    names = " ".join(" ".join(c.cmdline()) for c in children)
    assert "valkey-server" in names and "uvicorn" in names and "flower" in names
    assert "-Q ingest" in names and "-Q gpu" in names
    assert (tmp_path / "data" / "speechq.db").exists(), "SQLite under the data dir by default"
    assert f"data folder: {tmp_path / 'data'}" in up.output()
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0
    time.sleep(1)
    assert not still_running(children)
