#!/usr/bin/env bash
# Run it: the whole stack locally (no Docker), the UI, and a first full backup. Ctrl-C stops everything.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/bootstrap.sh"
cd "$REPO"
PYTHONPATH="$REPO/plugins:$REPO${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m devstack.run "$@"
