#!/usr/bin/env bash
# Shared set-up for the README's two commands: PostgreSQL server binaries, .venv, pinned dependencies.
# Safe to run again: it only does what is missing.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

say() { echo "[wedsync] $*"; }

# Python 3.11+
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "Python 3.11 or newer is needed (found: $("$PY" --version 2>&1 || echo none)). Install it, or set PYTHON=/path/to/python3.11"
  exit 1
fi

# PostgreSQL 15+ server binaries (initdb, pg_ctl, postgres, pg_dump, pg_restore)
have_pg() {
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ "$(basename "$(dirname "$d")")" -ge 15 ] 2>/dev/null && return 0
  done
  command -v initdb >/dev/null 2>&1 && [ "$(initdb --version | grep -oE '[0-9]+' | head -1)" -ge 15 ] && return 0
  return 1
}
if ! have_pg; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing PostgreSQL server binaries from the OS packages ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    say "PostgreSQL 15+ server binaries are missing. Install them, e.g.:"
    say "  sudo apt-get install postgresql        (Debian/Ubuntu)"
    say "  sudo dnf install postgresql-server     (Fedora/RHEL)"
    say "  brew install postgresql@16             (macOS)"
    exit 1
  fi
fi
# Redis (the Celery executor's broker: ./scripts/run.sh --executor celery and its test)
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server from the OS packages ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    say "redis-server is missing; only --executor celery needs it. Install it, e.g. 'sudo apt-get install redis-server'"
  fi
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  say "PostgreSQL refuses to run as root; creating the 'postgres' user to run the throwaway clusters"
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi

# Chromium from the OS packages: the console's browser tests drive /usr/bin/chromium (no browser download)
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Chromium from the OS packages (for the browser tests) ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  else
    say "Chromium is missing: the browser tests need /usr/bin/chromium (e.g. sudo apt-get install chromium)"
  fi
fi

# .venv with the exact pinned versions of everything
if [ ! -x .venv/bin/python ]; then
  say "creating .venv ..."
  "$PY" -m venv .venv
fi
stamp=.venv/.wedsync-lock.sha256
want="$(sha256sum requirements.lock | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing the pinned dependencies (requirements.lock) ..."
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.8"
  .venv/bin/uv pip sync -q --python .venv/bin/python requirements.lock
  echo "$want" > "$stamp"
  rm -f .venv/.wedsync-bytecode
fi
# Bytecode for every installed module, written once here: uv installs none, and with PYTHONDONTWRITEBYTECODE
# set nothing writes it later, so every Airflow task process would compile Airflow, boto3 and the Google
# client from source again (seconds per task; issue 8, "Speed as the user gets it").
if [ ! -f .venv/.wedsync-bytecode ]; then
  say "compiling the installed modules to bytecode (once) ..."
  .venv/bin/python -m compileall -q -j 0 .venv/lib >/dev/null || true
  touch .venv/.wedsync-bytecode
fi
