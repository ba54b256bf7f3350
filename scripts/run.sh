#!/usr/bin/env bash
# Run it: the whole stack locally (no Docker), the UI, and a first full backup. Ctrl-C stops everything.
#   ./scripts/run.sh --help        every option (ports, state directory, --executor celery, --scale, --fresh)
#   ./scripts/run.sh env           the stack's Airflow environment for a shell: eval "$(./scripts/run.sh env)"
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/bootstrap.sh" >&2
cd "$REPO"
PYTHONPATH="$REPO/plugins:$REPO${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m devstack.run "$@"
