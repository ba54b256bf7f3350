"""What the fault tests share: a whole backup through the core protocol, and ways to watch the source."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from wedsync_backup.crypto import Keyring
from wedsync_backup.export import ExportOptions, run_export
from wedsync_backup.manifest import Manifest, manifest_key, pending_manifest_key
from wedsync_backup.pg import PgTarget
from wedsync_backup.replicate import replicate
from wedsync_backup.storage.base import Storage
from wedsync_backup.verify import verify_copy

# Sample row values and a column that must never show up in a log, XCom, the catalog or the audit log.
SECRET_ROW_VALUE = "vow-of-rosalind-and-bartholomew-4711"
FAULT_SQL = f"""
CREATE TABLE couples (id serial PRIMARY KEY, names text NOT NULL, private_vow text NOT NULL);
INSERT INTO couples (names, private_vow)
SELECT 'couple ' || g, '{SECRET_ROW_VALUE}-' || g FROM generate_series(1, 200) g;
CREATE TABLE guests (id bigserial PRIMARY KEY, couple_id int REFERENCES couples, note text);
INSERT INTO guests (couple_id, note)
SELECT 1 + g % 200, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 150000) g;
CREATE INDEX guests_couple ON guests (couple_id);
CREATE TABLE events (id int, happened date NOT NULL) PARTITION BY RANGE (happened);
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT g, DATE '2026-01-01' + g % 300 FROM generate_series(1, 1000) g;
"""


def new_backup_id(kind: str = "full") -> str:
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def commit_everywhere(manifest: Manifest, targets: list[Storage]) -> None:
    """The commit step: the manifest (the commit marker) on every target, the pending copy removed."""
    data = manifest.to_bytes()
    for t in targets:
        t.put_bytes(manifest_key(manifest.backup_id), data)
    targets[0].delete([pending_manifest_key(manifest.backup_id)])


def full_backup(source: PgTarget, targets: list[Storage], ring: Keyring, backup_id: str | None = None) -> Manifest:
    """Export -> replicate -> verify every copy -> commit, as the backup DAG does, through the core."""
    manifest = run_export(source, targets[0], ring, backup_id=backup_id or new_backup_id(), options=ExportOptions())
    for t in targets[1:]:
        replicate(manifest, targets[0], t)
    for t in targets:
        assert verify_copy(manifest, t, ring).verified
    commit_everywhere(manifest, targets)
    return manifest


def sessions(admin_dsn: str, application_name: str) -> list[tuple[Any, ...]]:
    """Sessions on the server opened by us (every connection and tool of a test gets its own name)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, datname, state, wait_event_type, left(query, 60) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def child_tools(pid: int | None = None) -> list[str]:
    """pg_dump/pg_restore/psql processes still running under ``pid`` (default: this test process)."""
    proc = psutil.Process(pid or os.getpid())
    out = []
    for child in proc.children(recursive=True):
        try:
            if child.name() in ("pg_dump", "pg_restore", "psql") and child.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{child.name()} (pid {child.pid})")
        except psutil.NoSuchProcess:
            continue
    return out


def tool_processes(marker: str) -> list[int]:
    """Every pg_dump/pg_restore on the machine whose environment names ``marker`` (orphans included)."""
    found = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] not in ("pg_dump", "pg_restore"):
            continue
        try:
            if p.environ().get("PGAPPNAME") == marker:
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


REPO = Path(__file__).resolve().parents[2]


def task_process(
    command: str, key: bytes, db: PgTarget, root: Path, backup_id: str, **options: Any
) -> subprocess.Popen:
    """A process of its own running one core command (tests/faults/task_process.py), for a test to kill."""
    spec = {
        "command": command,
        "key": base64.b64encode(key).decode(),
        "db": dict(db.__dict__),
        "root": str(root),
        "backup_id": backup_id,
        **options,
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.task_process", json.dumps(spec)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def restore_killed_half_way(key: bytes, db: PgTarget, root: Path, backup_id: str) -> None:
    """Leave ``db`` as a restore of ``backup_id`` (from the local target at ``root``) leaves it when its process is
    killed outright once a table's data is in: half-loaded, under the restore's mark, nothing cleaned up."""
    proc = task_process("restore", key, db, root, backup_id, die_mid_restore=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-3000:]
