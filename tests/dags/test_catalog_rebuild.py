"""catalog_rebuild as an on-call engineer runs it: a full backup, the catalog lost, the DAG brings it back.

Runs against a repository and catalog of its own (fresh buckets, directory and databases), so it reads
only the backup it made. The backup is made in this process by the commands, through the same Airflow
connections (a whole backup_daily_full run is covered elsewhere); the rebuild is a real DAG run.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from wedsync_airflow.resources import airflow_resources
from wedsync_backup.commands.resources import RunRef
from wedsync_backup.policy import load_policy

from tests.fixtures.airflow import Stack, own_repository
from tests.fixtures.backups import full_backup

SOURCE_SQL = """
CREATE TABLE organizations (id bigserial PRIMARY KEY, name text NOT NULL);
INSERT INTO organizations (name) SELECT 'org ' || g FROM generate_series(1, 200) g;
"""
ROW = (
    "SELECT backup_id, backup_type, status, size_bytes, compressed_size_bytes, tables_included, primary_location,"
    " secondary_location, offsite_location, checksum, integrity_verified, retention_until, key_id,"
    " consistent_lsn::text, snapshot_time, total_rows, dag_id, run_id, created_by, rule_321, warnings"
    " FROM backup_operations ORDER BY backup_id"
)


@pytest.mark.slow
def test_catalog_rebuild_dag_brings_back_a_lost_catalog(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = own_repository(stack, monkeypatch, SOURCE_SQL)
    catalog, env = repo.catalog, repo.env
    run = RunRef("backup_daily_full", f"manual__{uuid.uuid4().hex}", datetime.now(UTC))
    full_backup(airflow_resources(load_policy()), run, reason="before the rebuild")
    with psycopg.connect(stack.cluster.dsn(catalog)) as conn:
        before = conn.execute(ROW).fetchall()
    assert len(before) == 1 and before[0][2] == "completed"

    stack.cluster.psql("-c", f'DROP DATABASE "{catalog}" WITH (FORCE)')
    stack.cluster.create_database(catalog)
    result = stack.run_dag("catalog_rebuild", {"from_target": "offsite"}, env=env)
    assert result.state == "success", result.output[-6000:]
    with psycopg.connect(stack.cluster.dsn(catalog)) as conn:
        assert conn.execute(ROW).fetchall() == before
        assert conn.execute("SELECT count(*) FROM backup_replicas WHERE verified").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM recovery_points").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'catalog_rebuilt'").fetchone() == (1,)
