"""Named recovery points and the catalog lockdown (migration 0006) against a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from wedsync_backup.catalog import migrate
from wedsync_backup.errors import ConfigError
from wedsync_backup.named_points import clean_label, find_named_point, mark_named_point, source_position

from devstack.postgres import Cluster


@pytest.fixture
def catalog_dsn(pg_cluster: Cluster, empty_db: str) -> str:
    dsn = pg_cluster.dsn(empty_db)
    migrate(dsn)
    return dsn


def test_a_named_point_records_the_source_position_and_is_found_by_label(pg_cluster: Cluster, catalog_dsn: str) -> None:
    at, lsn = source_position(pg_cluster.dsn("postgres"))
    made = mark_named_point(catalog_dsn, "  before the   guest import ", at=at, lsn=lsn, created_by="admin")
    assert made["label"] == "before the guest import" and made["wal_position"] == lsn
    found = find_named_point(catalog_dsn, "before the guest import")
    assert found["recovery_timestamp"] == at and found["created_by"] == "admin"

    with pytest.raises(ConfigError, match="already exists"):
        mark_named_point(catalog_dsn, "before the guest import", at=at, lsn=lsn, created_by="admin")
    with pytest.raises(ConfigError, match=r"No named recovery point 'nope'.*'before the guest import'"):
        find_named_point(catalog_dsn, "nope")
    with pytest.raises(ConfigError, match="no label"):
        clean_label("   ")
    with pytest.raises(ConfigError, match="201 characters"):
        clean_label("x" * 201)


def test_the_catalog_refuses_a_malformed_point(catalog_dsn: str) -> None:
    with psycopg.connect(catalog_dsn) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO recovery_points (point_type, label, recovery_timestamp, backup_id, chain)"
            " VALUES ('named', 'x', now(), NULL, '{a}')"
        )


@pytest.fixture
def logins(pg_cluster: Cluster, catalog_dsn: str) -> Iterator[dict[str, str]]:
    """A login in each role, and one in neither (PUBLIC only)."""
    suffix = uuid.uuid4().hex[:6]
    names = {"writer": f"w_{suffix}", "reader": f"r_{suffix}", "public": f"p_{suffix}"}
    with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {names['writer']} LOGIN IN ROLE wedsync_backup_writer")
        conn.execute(f"CREATE ROLE {names['reader']} LOGIN IN ROLE wedsync_backup_reader")
        conn.execute(f"CREATE ROLE {names['public']} LOGIN")
    dbname = psycopg.conninfo.conninfo_to_dict(catalog_dsn)["dbname"]
    yield {k: f"host=127.0.0.1 port={pg_cluster.port} dbname={dbname} user={v}" for k, v in names.items()}
    with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        for v in names.values():
            conn.execute(f"DROP ROLE IF EXISTS {v}")


def _can(dsn: str, sql: str) -> bool:
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute(sql)
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def test_the_catalog_grants_nothing_to_public_and_reads_only_to_the_reader(logins: dict[str, str]) -> None:
    insert_audit = "INSERT INTO audit_log (actor, action) VALUES ('t', 'test')"
    assert _can(logins["writer"], "SELECT count(*) FROM backup_operations")
    assert _can(logins["writer"], insert_audit)
    assert _can(logins["writer"], "UPDATE backup_replicas SET error = NULL WHERE false")
    assert not _can(logins["writer"], "DELETE FROM audit_log WHERE false")  # append-only, even for the writer

    assert _can(logins["reader"], "SELECT count(*) FROM backup_operations, audit_log, recovery_points")
    assert not _can(logins["reader"], insert_audit)
    assert not _can(logins["reader"], "UPDATE backup_operations SET reason = NULL WHERE false")

    assert not _can(logins["public"], "SELECT count(*) FROM backup_operations")
    assert not _can(logins["public"], "SELECT count(*) FROM audit_log")
