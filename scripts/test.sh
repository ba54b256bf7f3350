#!/usr/bin/env bash
# Test it: lint and the whole suite against real PostgreSQL, S3 (moto server) and GCS (emulator).
# The suite runs on WEDSYNC_TEST_WORKERS processes (default: one per CPU, at most 4; 1 runs it serially).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/bootstrap.sh"
cd "$REPO"
.venv/bin/ruff check .
workers="${WEDSYNC_TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}"
[ "$workers" -gt 4 ] && workers=4
parallel=()
[ "$workers" -gt 1 ] && parallel=(-n "$workers")  # one file (the console: its directory) per worker at a time: tests/conftest.py
exec .venv/bin/python -m pytest -p no:cacheprovider "${parallel[@]}" "$@"
