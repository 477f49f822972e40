"""The ingest worker's parent imports funasr before its pool forks (a job's first tasks no longer wait ~10 s for
the import, issue 16), and must not start CUDA doing so: its children, forked from it, may run the VAD on a GPU."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_ingest_parent_imports_funasr_without_starting_cuda():
    probe = ("import sys, torch, workers.ingest.worker; "
             "print('funasr' in sys.modules, torch.cuda.is_initialized(), "
             "sys.modules.get('workers.ingest.vad') is not None)")
    env = {**os.environ, "SPEECHQ_WORKER_ROLE": "ingest"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out[-3:] == ["True", "False", "True"]


def test_other_roles_do_not_import_funasr():
    probe = "import sys, workers.ingest.worker; print('funasr' in sys.modules)"
    env = {**os.environ, "SPEECHQ_WORKER_ROLE": "housekeeping"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out[-1] == "False"
