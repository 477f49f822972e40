#!/usr/bin/env bash
# Installs what speechq needs on a fresh Debian/Ubuntu machine with Python 3.11:
# system packages (ffmpeg, espeak-ng for the synthesised sample calls, venv), then a virtual
# environment in .venv with speechq and its pinned dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
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
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
echo "speechq: installed in $(pwd)/.venv"
