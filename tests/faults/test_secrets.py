"""Fault matrix row 11: secrets stay secret. One real backup_daily_full run (`airflow dags test`), then every
place a person or a tool can read is scanned for the master key, the backup's data key and sample row
values: the task logs, XCom, every catalog table and the audit log.
"""

from __future__ import annotations

import base64
from pathlib import Path

import psycopg
import pytest
from wedsync_backup.crypto import Keyring
from wedsync_backup.repository import committed_backup_ids, read_manifest
from wedsync_backup.storage.local import LocalStorage

from tests.faults.conftest import FaultWorld
from tests.faults.helpers import SECRET_ROW_VALUE
from tests.fixtures.airflow import Stack

pytestmark = pytest.mark.slow


def _forms(secret: bytes) -> list[str]:
    """How a key could leak: base64 (standard and url-safe, padded or not) and hex."""
    b64 = base64.b64encode(secret).decode()
    return [b64, b64.rstrip("="), base64.urlsafe_b64encode(secret).decode().rstrip("="), secret.hex()]


def _table_dump(dsn: str) -> str:
    """Every row of every table of a database, as text."""
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for (table,) in tables:
            out += [r[0] for r in conn.execute(f"SELECT t::text FROM {table} t").fetchall()]
    return "\n".join(out)


def test_no_secret_in_logs_xcom_catalog_or_audit_log(stack: Stack, world: FaultWorld) -> None:
    result = stack.run_dag("backup_daily_full", env=stack.env(WEDSYNC_SOURCE=stack.conn_json(world.source_db)))
    assert result.state == "success", result.output[-6000:]

    master = base64.b64decode(stack.config.master_key)
    primary = LocalStorage(stack.config.primary_path, name="primary", medium="disk", site="a")
    ring = Keyring(master)
    data_keys = []
    for backup_id in committed_backup_ids(primary):
        m = read_manifest(primary, backup_id)
        data_keys.append(ring.unwrap(m.encryption["wrapped_key"], backup_id).key)
    assert data_keys
    with psycopg.connect(world.cluster.dsn(world.source_db)) as conn:
        rows = conn.execute("SELECT private_vow FROM couples ORDER BY id LIMIT 3").fetchall()
        notes = conn.execute("SELECT note FROM guests ORDER BY id LIMIT 3").fetchall()
    needles = {
        "master key": _forms(master),
        "data key": [f for k in data_keys for f in _forms(k)],
        "row value": [SECRET_ROW_VALUE, *(r[0] for r in rows), *(n[0] for n in notes)],
    }

    logs_dir = Path(stack.config.home) / "logs"
    task_logs = result.output + "".join(p.read_text(errors="replace") for p in logs_dir.rglob("*") if p.is_file())
    with psycopg.connect(stack.cluster.dsn(stack.config.airflow_db), autocommit=True) as conn:
        xcom = "\n".join(r[0] for r in conn.execute("SELECT x::text FROM xcom x").fetchall())
    catalog = _table_dump(stack.cluster.dsn(stack.config.catalog_db))
    with stack.catalog() as cat:
        audit = "\n".join(r[0] for r in cat.execute("SELECT a::text FROM audit_log a").fetchall())
    # the tasks' own logs were read
    seen = (sorted(logs_dir.rglob("*"))[-20:], result.output[-4000:])
    assert "Exported" in task_logs and "Verified" in task_logs, seen
    assert "backup_id" in xcom and "manifest_sha256" in xcom  # what XCom should carry is there
    assert "completed" in catalog

    places = {"task logs": task_logs, "XCom": xcom, "catalog": catalog, "audit log": audit}
    leaks = [
        f"{what} in {where}"
        for where, text in places.items()
        for what, forms in needles.items()
        if any(f in text for f in forms)
    ]
    assert leaks == []
