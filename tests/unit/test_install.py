"""The install cannot drift: exact pins where versions must agree, and a lock that matches them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d.split("==")[0]: d.split("==")[1] for d in deps if "==" in d}


def _locked() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"]}


def test_torch_and_torchaudio_pinned_exactly_and_locked_alike():
    pins = _pyproject_pins()
    assert pins.get("torch") == pins.get("torchaudio") == "2.11.0", pins
    locked = _locked()
    assert locked["torch"] == locked["torchaudio"] == "2.11.0"


def test_every_locked_wheel_has_a_hash():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    for package in lock["package"]:
        for artifact in package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else []):
            assert artifact.get("hash", "").startswith("sha256:"), package["name"]


def test_installed_versions_are_the_locked_ones():
    from importlib.metadata import version

    locked = _locked()
    for name in ("torch", "torchaudio", "funasr", "celery", "sqlalchemy", "fastapi"):
        assert version(name).split("+")[0] == locked[name], name


def test_lock_matches_pyproject():
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (deploy/install.sh installs it into .venv)")
    out = subprocess.run([uv, "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0 and "offline" in out.stderr.lower() and "network" in out.stderr.lower():
        pytest.skip(f"uv needs the package index to check the lock: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr
