#!/usr/bin/env bash
# Test it: lint and the whole suite against real PostgreSQL, S3 (moto server) and GCS (emulator).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/bootstrap.sh"
cd "$REPO"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
