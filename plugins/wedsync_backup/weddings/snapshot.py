"""One consistent snapshot for a whole wedding run, across the batch tasks that read it.

The begin phase starts a small holder process: it opens a REPEATABLE READ transaction on the source, exports
its snapshot (``pg_export_snapshot()``) and keeps the transaction open. Every batch task, wherever it runs,
imports it (``SET TRANSACTION SNAPSHOT``), so all the weddings of a run describe the same instant. The seal
phase (or mark_failed) releases the holder by ending its server session; the holder also ends by itself after
``max_seconds``, so a run that dies can never pin the source's snapshot for long.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from wedsync_backup.errors import WedSyncError
from wedsync_backup.pg import PgTarget

APP_PREFIX = "wedsync_wedding_snapshot:"
DEFAULT_MAX_SECONDS = 3600
_HOLDER = r"""
import json, sys, time
import psycopg
app, max_seconds = sys.argv[1], float(sys.argv[2])
conn = psycopg.connect("", application_name=app, autocommit=False)
conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
row = conn.execute(
    "SELECT pg_export_snapshot(), pg_backend_pid(), pg_current_wal_lsn()::text, txid_current_snapshot()::text,"
    " now()"
).fetchone()
print(json.dumps({"snapshot": row[0], "backend_pid": row[1], "lsn": row[2], "txid_snapshot": row[3],
                  "time": row[4].isoformat()}), flush=True)
sys.stdout.close()
deadline = time.monotonic() + max_seconds
try:
    while time.monotonic() < deadline:
        time.sleep(1)
        conn.execute("SELECT 1")  # ends (with an error) once the session is terminated: released
except Exception:
    pass
"""
_children: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class HeldSnapshot:
    snapshot: str
    backend_pid: int
    lsn: str
    txid_snapshot: str
    time: str  # ISO 8601, the source's clock
    application_name: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def hold_snapshot(source: PgTarget, backup_id: str, *, max_seconds: int = DEFAULT_MAX_SECONDS) -> HeldSnapshot:
    """Start the holder process and return the snapshot it exports (and how to release it)."""
    _reap()
    app = f"{APP_PREFIX}{backup_id}"[:63]
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, app, str(max_seconds)],
        env=source.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # outlives the begin task on purpose; released by seal or mark_failed
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        proc.wait()
        raise WedSyncError(
            f"Could not export a snapshot from {source.describe()} for {backup_id}",
            err.splitlines()[-1] if err else "the snapshot holder ended without a word",
            "check the source connection and re-run",
            transient=True,
        )
    _children.append(proc)
    d = json.loads(line)
    return HeldSnapshot(d["snapshot"], int(d["backend_pid"]), d["lsn"], d["txid_snapshot"], d["time"], app)


def release_snapshot(source: PgTarget, backup_id: str) -> int:
    """End every holder session of ``backup_id`` on the source (idempotent); returns how many ended."""
    app = f"{APP_PREFIX}{backup_id}"[:63]
    with source.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
    _reap()
    return sum(1 for (ok,) in rows if ok)


def import_snapshot(conn: psycopg.Connection, snapshot: str, backup_id: str) -> None:
    """Make ``conn``'s transaction read the run's snapshot; a released or ended holder is a clear error."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    except psycopg.Error as e:
        raise WedSyncError(
            f"The snapshot of wedding backup {backup_id} is no longer available",
            f"its holder ended (released, restarted source, or older than {DEFAULT_MAX_SECONDS} s): {e}".strip(),
            "re-run the DAG: a new run exports a new snapshot",
        ) from e


def _reap() -> None:
    """Collect holders that ended, so no zombie outlives its run in a long-lived worker."""
    for proc in list(_children):
        if proc.poll() is not None:
            for pipe in (proc.stdout, proc.stderr):
                if pipe:
                    pipe.close()
            _children.remove(proc)
