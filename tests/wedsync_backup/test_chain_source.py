"""A full backup's preflight prepares the chain on the source (DDL capture, large-object warning), and the
catalog records what schema changes did to each incremental (migration 0002)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from wedsync_backup.catalog import Catalog
from wedsync_backup.chain_source import prepare_chain_source
from wedsync_backup.logical.ddl import capture_state, remove_ddl_capture
from wedsync_backup.logical.wal_catalog import FUNCTION
from wedsync_backup.manifest import Manifest
from wedsync_backup.policy import load_policy
from wedsync_backup.schema_changes import record_outcome

from devstack.postgres import Cluster
from tests.wedsync_backup.test_export import pg_target


@pytest.fixture
def cat(pg_cluster: Cluster, empty_db: str) -> Catalog:
    c = Catalog(pg_cluster.dsn(empty_db))
    c.migrate()
    return c


@pytest.fixture
def source(pg_cluster: Cluster) -> Iterator[str]:
    name = f"src_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    pg_cluster.psql("-c", "SELECT lo_from_bytea(0, 'scan')", dbname=name)
    yield name
    pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_preflight_installs_the_capture_audits_it_and_warns_of_large_objects(
    pg_cluster: Cluster, cat: Catalog, source: str
) -> None:
    target = pg_target(pg_cluster, source)
    warnings = prepare_chain_source(load_policy(), cat, target, actor="test", backup_id="full-1")
    assert len(warnings) == 1 and "1 large objects" in warnings[0] and "NOT in the incremental chain" in warnings[0]
    assert capture_state(target).installed
    (entry,) = [e for e in cat.audit_entries("full-1") if e["action"] == "ddl_capture_installed"]
    assert entry["details"]["installed"] is True and entry["details"]["schema"] == "_wedsync_backup"
    prepare_chain_source(load_policy(), cat, target, actor="test", backup_id="full-1")  # a retry: one entry
    assert len([e for e in cat.audit_entries("full-1") if e["action"] == "ddl_capture_installed"]) == 1
    remove_ddl_capture(target)


def test_preflight_without_superuser_says_whether_a_chain_end_will_be_placed_exactly(
    pg_cluster: Cluster, cat: Catalog, source: str
) -> None:
    role = f"nosuper_{uuid.uuid4().hex[:6]}"
    pg_cluster.psql("-c", f'CREATE ROLE {role} LOGIN REPLICATION; GRANT ALL ON DATABASE "{source}" TO {role}')
    weak = dataclasses.replace(pg_target(pg_cluster, source), user=role)
    try:
        (_, warning) = prepare_chain_source(load_policy(), cat, weak, actor="test", backup_id="full-1")
        assert "SUPERUSER" in warning and "CREATE EXTENSION pg_walinspect" in warning
        pg_cluster.psql(
            "-c", f"CREATE EXTENSION pg_walinspect; GRANT EXECUTE ON FUNCTION {FUNCTION} TO {role}", dbname=source
        )
        (_, warning) = prepare_chain_source(load_policy(), cat, weak, actor="test", backup_id="full-2")
        assert "placed exactly from the WAL" in warning
        (entry,) = [e for e in cat.audit_entries("full-2") if e["action"] == "ddl_capture_unavailable"]
        assert entry["details"]["installed"] is False and entry["details"]["wal_inspection"] is True
    finally:
        pg_cluster.psql("-c", f'DROP OWNED BY {role}; REVOKE ALL ON DATABASE "{source}" FROM {role}', dbname=source)
        pg_cluster.psql("-c", f"DROP ROLE {role}")


def incremental(backup_id: str, **extra: object) -> Manifest:
    return Manifest(
        backup_id=backup_id,
        backup_type="incremental",
        created_at="2026-11-29T12:00:00+00:00",
        source={},
        consistent_point={},
        encryption={},
        compression={},
        schema={},
        parent_backup_id="full-1",
        extra={"chain": ["full-1", backup_id], **extra},
    )


def test_the_catalog_row_says_replayed_or_chain_ended(cat: Catalog) -> None:
    for backup_id in ("inc-1", "inc-2", "inc-3"):
        cat.start_backup(
            backup_id=backup_id,
            backup_type="incremental",
            created_by="test",
            rule_321={},
            warnings=[],
            retention_until=None,
            parent_backup_id="full-1",
        )
    ddl = [{"tag": "ALTER TABLE", "lsn": "0/1", "statement": "ALTER TABLE t ADD COLUMN c int", "xid": "7"}]
    end = {"reason": "the source's schema changed and the change was not captured", "covered_until": "T"}
    assert record_outcome(cat, incremental("inc-1", schema_changes=[]), actor="test") == "none"
    assert record_outcome(cat, incremental("inc-2", schema_changes=ddl), actor="test") == "replayed"
    ended = incremental("inc-3", schema_changes=[], chain_end=end)
    assert record_outcome(cat, ended, actor="test") == "chain_ended"
    assert record_outcome(cat, ended, actor="test") == "chain_ended"  # a retry writes the same
    with cat.connect() as conn:
        rows = conn.execute(
            "SELECT backup_id, schema_changes, schema_change_details, warnings FROM backup_operations "
            "WHERE backup_id LIKE 'inc-%' ORDER BY 1"
        ).fetchall()
    assert [r["schema_changes"] for r in rows] == ["none", "replayed", "chain_ended"]
    assert rows[1]["schema_change_details"]["replayed"][0]["statement"] == "ALTER TABLE t ADD COLUMN c int"
    assert rows[2]["schema_change_details"]["chain_end"]["covered_until"] == "T"
    assert len(rows[2]["warnings"]) == 1 and "up to T are restorable" in rows[2]["warnings"][0]
    assert [e["action"] for e in cat.audit_entries("inc-3") if e["action"] != "backup_started"] == ["chain_ended"]
