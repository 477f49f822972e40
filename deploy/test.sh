#!/usr/bin/env bash
# Installs speechq and runs the whole test suite: unit tests, and end-to-end tests with a real
# Valkey server, real Celery worker processes, the API, ffmpeg, SQLite and PostgreSQL
# (TEST_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/postgres; the
# PostgreSQL half skips where none is reachable, except under CI=true, where it must pass).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh --test
exec .venv/bin/python -m pytest -q "$@"
