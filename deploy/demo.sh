#!/usr/bin/env bash
# Installs speechq, starts the whole stack on embedded defaults (SQLite, spool, its own Valkey),
# processes synthesised sample calls (a stereo G.711 call and a zip of calls) and prints results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
exec .venv/bin/speechq demo "$@"
