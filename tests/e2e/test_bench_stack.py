"""The end-to-end bench (bench/e2e_bench.py) measures only the stack it started, and leaves none behind: a
bench killed by `timeout` stops its stack (which runs in its own process group), and a bench whose ports are
held refuses to start instead of timing the stack that holds them."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import free_port, need_espeak
from tests.e2e.conftest import still_running

pytestmark = pytest.mark.e2e


def two_free_ports() -> int:
    """A port p with p + 1 free too (the bench's API and embedded Valkey)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def bench_cmd(tmp_path, port: int) -> list[str]:
    return [sys.executable, "-m", "bench.e2e_bench", "--size", "tiny", "--hours", "0.02", "--min-minutes", "1",
            "--max-minutes", "1", "--work", str(tmp_path / "work"), "--models-dir", str(tmp_path / "models"),
            "--source", str(tmp_path / "source.wav"), "--port", str(port), "--timeout", "120"]


def stack_of(data_dir) -> list[psutil.Process]:
    """Every process started with SPEECHQ_DATA_DIR = data_dir (the stack and its children)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("SPEECHQ_DATA_DIR") == str(data_dir):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_a_held_port_stops_the_bench_before_it_makes_anything(tmp_path):
    port = two_free_ports()
    with socket.socket() as held:  # say, the Valkey of a stack that an earlier run left behind
        held.bind(("127.0.0.1", port + 1))
        held.listen()
        out = subprocess.run(bench_cmd(tmp_path, port), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert f"127.0.0.1:{port + 1} is in use by another process" in out.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "models").exists()


def test_a_terminated_bench_stops_the_stack_it_started(tmp_path):
    need_espeak()
    port = two_free_ports()
    bench = subprocess.Popen(bench_cmd(tmp_path, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    data = tmp_path / "work" / "data"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until the stack's API answers: its processes are all there
            assert bench.poll() is None, bench.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the bench's stack did not answer in 300 s")
        stack = stack_of(data)
        assert len(stack) >= 3  # `up`, the API, Valkey and the workers
        bench.send_signal(signal.SIGTERM)  # as `timeout` does
        assert bench.wait(180) == 143
        psutil.wait_procs(stack, timeout=30)
        assert not still_running(stack), [p.cmdline() for p in still_running(stack)]
        assert not stack_of(data)
    finally:
        if bench.poll() is None:
            bench.kill()
        for p in still_running(stack_of(data)):
            p.kill()
