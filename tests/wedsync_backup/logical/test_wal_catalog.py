"""Catalog writers read from the WAL (pg_walinspect), on a real cluster: what counts, and who may read it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from wedsync_backup.incremental import _catalog_writers
from wedsync_backup.logical.wal_catalog import FUNCTION, catalog_writers, wal_inspection_available

from devstack.postgres import Cluster
from tests.wedsync_backup.test_export import pg_target
from tests.wedsync_backup.test_incremental import SCHEMA, drop_db, new_db, write


@pytest.fixture
def source(pg_cluster: Cluster) -> Iterator[str]:
    db = new_db(pg_cluster, SCHEMA)
    yield db
    drop_db(pg_cluster, db)


SYNC = "-c synchronous_commit=on"  # each commit flushed: below the flush LSN, where the WAL can be read


def lsn(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]


def xid_of(conn: psycopg.Connection, statements: list[str]) -> str:
    """Run ``statements`` in one transaction; its top-level xid."""
    with conn.transaction():
        for s in statements:
            conn.execute(s)
        return conn.execute("SELECT pg_current_xact_id()::xid::text").fetchone()[0]


def test_the_transactions_that_wrote_catalog_rows_and_only_those(pg_cluster: Cluster, source: str) -> None:
    write(pg_cluster, source, "CREATE EXTENSION pg_walinspect; CREATE VIEW seats AS SELECT seat FROM guests")
    with psycopg.connect(pg_cluster.dsn(source), autocommit=True, options=SYNC) as conn:
        start = lsn(conn)
        drop_view = xid_of(conn, ["DROP VIEW seats"])  # a DROP leaves no row behind, but the WAL has it
        rows = xid_of(conn, ["INSERT INTO guests (name) VALUES ('a')", "UPDATE guests SET seat = 2"])
        in_subtransaction = xid_of(
            conn,
            [
                "INSERT INTO guests (name) VALUES ('b')",
                "DO $$ BEGIN BEGIN CREATE INDEX guests_seat ON guests (seat); EXCEPTION WHEN others THEN NULL;"
                " END; END $$",
            ],
        )
        statistics = xid_of(conn, ["ANALYZE guests"])
        conn.execute("VACUUM guests")
        lo = xid_of(conn, ["SELECT lo_from_bytea(0, 'a large object')"])
        end = lsn(conn)
    with psycopg.connect(pg_cluster.dsn(source)) as conn:
        writers = catalog_writers(conn, start, end)
    assert writers is not None
    assert {drop_view, in_subtransaction} <= writers  # the subtransaction's writes count for its transaction
    assert not {rows, statistics, lo} & writers


def test_a_role_without_superuser_reads_it_once_granted_the_function(pg_cluster: Cluster, source: str) -> None:
    role = f"walreader_{uuid.uuid4().hex[:6]}"
    pg_cluster.psql("-c", f'CREATE ROLE {role} LOGIN; GRANT ALL ON DATABASE "{source}" TO {role}')
    dsn = f"host=127.0.0.1 port={pg_cluster.port} user={role} dbname={source}"
    try:
        with psycopg.connect(dsn) as conn:
            assert not wal_inspection_available(conn)  # not installed
            assert catalog_writers(conn, "0/0", "0/0") is None
        write(pg_cluster, source, "CREATE EXTENSION pg_walinspect")
        with psycopg.connect(dsn) as conn:
            assert not wal_inspection_available(conn)  # installed, not granted
        write(pg_cluster, source, f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO {role}")
        with psycopg.connect(pg_cluster.dsn(source), autocommit=True, options=SYNC) as admin:
            start = lsn(admin)
            changed = xid_of(admin, ["ALTER TABLE guests ADD COLUMN email text"])
            end = lsn(admin)
        with psycopg.connect(dsn) as conn:
            assert wal_inspection_available(conn)
            assert catalog_writers(conn, start, end) == {changed}
    finally:
        write(pg_cluster, source, "DROP EXTENSION IF EXISTS pg_walinspect")
        pg_cluster.psql("-c", f'REVOKE ALL ON DATABASE "{source}" FROM {role}; DROP ROLE {role}')


def test_a_wal_that_cannot_be_read_leaves_the_placement_to_the_stream(pg_cluster: Cluster, source: str) -> None:
    """An error reading the WAL (here WAL long recycled) must not fail the capture: the chain end is then placed
    from the stream alone, as without pg_walinspect. An empty range is no error."""
    write(pg_cluster, source, "CREATE EXTENSION pg_walinspect")
    target = pg_target(pg_cluster, source)
    with psycopg.connect(pg_cluster.dsn(source), autocommit=True, options=SYNC) as conn:
        now = lsn(conn)
    assert _catalog_writers(target, now, now) == set()
    assert _catalog_writers(target, "0/10", now) is None
