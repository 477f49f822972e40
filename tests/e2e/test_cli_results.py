"""`speechq status`, `results` and `submit --wait` against real processes: exit codes, stderr, the results table."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from api.cli.jobs import ExitCode
from shared import samples
from tests.conftest import free_port, need_espeak

pytestmark = pytest.mark.e2e
SPEECHQ = [sys.executable, "-m", "api.cli"]


def speechq(*args: str, columns: int = 100) -> subprocess.CompletedProcess:
    return subprocess.run([*SPEECHQ, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": str(columns)})


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_help_documents_the_exit_codes():
    for command in ("submit", "status", "results"):
        out = speechq(command, "--help", columns=200)
        assert out.returncode == 0 and "3 no such job; 4 job failed; 5 some files failed" in out.stdout, out.stdout


def test_unknown_job_exits_not_found(api):
    for command in (("status",), ("results",), ("results", "--json")):
        out = speechq(*command, "0123456789abcdef", "--api", api.url)
        assert out.returncode == ExitCode.NOT_FOUND == 3, out
        assert _one_line(out.stderr) == "speechq: no job 0123456789abcdef" and out.stdout == ""


def test_api_unreachable_exits_1():
    out = speechq("status", "0123", "--api", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == ExitCode.API_ERROR == 1
    assert _one_line(out.stderr).startswith("speechq: cannot reach the API at http://127.0.0.1:")


def test_failed_and_partly_failed_jobs_exit_non_zero(api, tmp_path):
    need_espeak()
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(7).bytes(4000))
    out = speechq("submit", str(garbage), "--wait", "--api", api.url)
    assert out.returncode == ExitCode.FAILED == 4, out.stdout + out.stderr
    line = _one_line(out.stderr)
    job_id = line.split()[2]
    assert line == f"speechq: job {job_id} failed: every file failed; see the files' errors (speechq status {job_id})"
    assert speechq("status", job_id, "--api", api.url).returncode == ExitCode.FAILED
    assert speechq("results", job_id, "--api", api.url).returncode == ExitCode.FAILED

    call = samples.mono_call(tmp_path / "good.wav", [(0, "Thank you for calling, how can I help?")])
    out = speechq("submit", str(call), str(garbage), "--wait", "--api", api.url)
    assert out.returncode == ExitCode.PARTLY_FAILED == 5, out.stdout + out.stderr
    assert _one_line(out.stderr).endswith(": 1 of 2 file(s) failed")
    assert "garbage.wav failed: not a readable audio file" in out.stdout
    assert str(api.stack.settings.spool) not in out.stdout

    out = speechq("submit", str(call), "--wait", "--api", api.url)
    assert out.returncode == ExitCode.OK and out.stderr == "", out.stderr
    job_id = out.stdout.split()[1]
    status = speechq("status", job_id, "--api", api.url)
    assert status.returncode == 0 and '"state": "done"' in status.stdout


def test_results_table_is_a_conversation_that_fits_the_terminal(api, tmp_path):
    need_espeak()
    call = samples.stereo_g711_call(tmp_path / f"{'a-very-long-recording-name-' * 4}call.wav")
    job = api.submit([call], channel_labels="agent,customer")
    assert api.wait(job["id"])["state"] == "done"
    out = speechq("results", job["id"], "--api", api.url, columns=100)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(line for line in lines if len(line) > 100)
    header = next(line for line in lines if line.lstrip().startswith("start"))
    assert header.split()[:7] == ["start", "end", "speaker", "language", "emotion", "event", "text"]
    rows = lines[lines.index(header) + 1:]
    speakers = [row.split()[2] for row in rows if row[:1].isdigit()]  # a row starts with its start time, m:ss.s
    # The synthetic call: agent (left) and customer (right) take turns, three and two of them.
    assert speakers == ["agent", "customer", "agent", "customer", "agent"], out.stdout
    starts = [row.split()[0] for row in rows if row[:1].isdigit()]
    assert starts == sorted(starts, key=lambda t: float(t.split(":")[0]) * 60 + float(t.split(":")[1]))
    assert "RANDOM WEIGHTS" in out.stdout


@pytest.mark.parametrize(("state", "failed", "code"), [
    ("queued", 0, ExitCode.OK), ("running", 1, ExitCode.OK), ("done", 0, ExitCode.OK),
    ("done", 2, ExitCode.PARTLY_FAILED), ("failed", 3, ExitCode.FAILED), ("cancelled", 0, ExitCode.CANCELLED)])
def test_exit_code_of_each_job_state(state, failed, code):
    from api.cli.jobs import outcome

    assert outcome({"id": "j", "state": state, "files_failed": failed, "files_total": 3, "error": None})[0] == code
