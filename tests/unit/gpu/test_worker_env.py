"""The GPU worker's entry module sets up the process before torch starts: the compile cache lives in the data
folder (kept across restarts and container re-creation), unless the operator named one."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PRINT = "import os, workers.gpu.worker; print(os.environ['TORCHINDUCTOR_CACHE_DIR'])"


def _cache_dir(env: dict) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SPEECHQ_", "TORCHINDUCTOR_"))}
    out = subprocess.run([sys.executable, "-c", PRINT], env={**clean, **env}, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_compile_cache_defaults_to_the_data_folder(tmp_path):
    assert _cache_dir({"SPEECHQ_DATA_DIR": str(tmp_path)}) == str((tmp_path / "compile-cache").resolve())


def test_compile_cache_setting_and_torchs_own_variable_win(tmp_path):
    assert _cache_dir({"SPEECHQ_DATA_DIR": str(tmp_path), "SPEECHQ_COMPILE_CACHE_DIR": str(tmp_path / "cc")}) == \
        str((tmp_path / "cc").resolve())
    assert _cache_dir({"SPEECHQ_DATA_DIR": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": "/elsewhere"}) == "/elsewhere"
