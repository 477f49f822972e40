#!/usr/bin/env bash
# Installs what speechq needs on a fresh Debian/Ubuntu machine with Python 3.11: system packages
# (ffmpeg; espeak-ng for the synthesised sample calls; with --test also Chromium for the /docs
# browser test and PostgreSQL's server binaries for the chaos suite), then .venv with exactly the
# versions in uv.lock (hash-checked). `uv sync --locked` refuses to install when uv.lock no longer
# matches pyproject.toml. Ends with `speechq selfcheck`,
# which loads torchaudio's native library and the VAD model and says plainly what is wrong.
# Safe to run again: an existing .venv is brought back to the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null || need+=(chromium)
  # the chaos suite (tests/chaos) starts and restarts its own PostgreSQL cluster with initdb/pg_ctl
  command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
fi
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "speechq: installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/uv --version 2>/dev/null | grep -q " $UV_VERSION"; then
  .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip -q
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
echo "speechq: installing the locked dependencies (torch brings CUDA libraries, about 5 GB, even without a GPU)"
UV_PROJECT_ENVIRONMENT=.venv .venv/bin/uv sync --locked --inexact --extra test --quiet
.venv/bin/speechq selfcheck
echo "speechq: installed in $(pwd)/.venv"
