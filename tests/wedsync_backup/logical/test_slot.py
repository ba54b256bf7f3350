"""Replication slots: the snapshot a chain starts from, advancing, dropping, and watching retained WAL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from wedsync_backup.errors import ConfigError
from wedsync_backup.logical.slot import (
    DECODING_OPTIONS,
    SLOT_PREFIX,
    STABLE_OUTPUT,
    advance_slot,
    check_logical_decoding,
    drop_slot,
    slot_info,
    slot_name_for,
    slot_with_snapshot,
    wedsync_slots,
)
from wedsync_backup.pg import PgTarget

from devstack.postgres import Cluster
from tests.wedsync_backup.test_export import pg_target


@pytest.fixture
def db(pg_cluster: Cluster) -> Iterator[str]:
    """A database with table t(id) holding 1..3; every slot on it is dropped before the database is."""
    name = f"slot_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    pg_cluster.psql("-c", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3)", dbname=name)
    try:
        yield name
    finally:
        pg_cluster.psql(
            "-c",
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}'",
        )
        pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write(cluster: Cluster, db: str, stmt: str) -> None:
    # synchronous_commit on: a slot decodes only WAL that is flushed
    with psycopg.connect(cluster.dsn(db), autocommit=True, options="-c synchronous_commit=on") as conn:
        conn.execute(stmt)


def peek(cluster: Cluster, db: str, slot: str) -> list[str]:
    with psycopg.connect(cluster.dsn(db), autocommit=True) as conn:
        conn.execute(STABLE_OUTPUT)
        opts = ", ".join(f"'{o}'" for o in DECODING_OPTIONS)
        rows = conn.execute(f"SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, {opts})", (slot,))
        return [r[0] for r in rows.fetchall()]


def changes(cluster: Cluster, db: str, slot: str) -> list[str]:
    return [line for line in peek(cluster, db, slot) if line.startswith("table ")]


def test_slot_name_is_deterministic_and_valid() -> None:
    a = slot_name_for("full-2026-11-21")
    assert a == slot_name_for("full-2026-11-21")
    assert a != slot_name_for("full-2026-11-22")
    assert a.startswith(SLOT_PREFIX) and len(a) <= 63 and a.replace("_", "").isalnum() and a == a.lower()


def test_the_snapshot_sees_exactly_what_was_committed_before_the_slot(pg_cluster: Cluster, db: str) -> None:
    source = pg_target(pg_cluster, db)
    slot = slot_name_for(f"snap-{db}")
    with slot_with_snapshot(source, slot) as (snapshot, lsn):
        assert snapshot and "/" in lsn
        write(pg_cluster, db, "INSERT INTO t VALUES (4); DELETE FROM t WHERE id = 1")
        with psycopg.connect(pg_cluster.dsn(db)) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            seen = [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id").fetchall()]
    assert seen == [1, 2, 3]
    info = slot_info(source, slot)
    assert info is not None and info.name == slot and not info.active
    assert info.confirmed_flush_lsn == lsn
    # and the slot's stream holds exactly what the snapshot does not
    assert changes(pg_cluster, db, slot) == [
        "table public.t: INSERT: id[integer]:4",
        "table public.t: DELETE: id[integer]:1",
    ]


def test_an_error_inside_the_block_drops_the_slot(pg_cluster: Cluster, db: str) -> None:
    source = pg_target(pg_cluster, db)
    slot = slot_name_for(f"err-{db}")
    with pytest.raises(RuntimeError, match="export failed"), slot_with_snapshot(source, slot):
        assert slot_info(source, slot) is not None
        raise RuntimeError("export failed")
    assert slot_info(source, slot) is None


def test_a_retry_replaces_the_slot_of_an_earlier_attempt(pg_cluster: Cluster, db: str) -> None:
    source = pg_target(pg_cluster, db)
    slot = slot_name_for(f"retry-{db}")
    with slot_with_snapshot(source, slot) as (_, first_lsn):
        pass
    write(pg_cluster, db, "INSERT INTO t VALUES (10)")
    with slot_with_snapshot(source, slot) as (snapshot, second_lsn), psycopg.connect(pg_cluster.dsn(db)) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 4
    assert [s.name for s in wedsync_slots(source)].count(slot) == 1
    with psycopg.connect(pg_cluster.dsn(db)) as conn:
        assert conn.execute("SELECT %s::pg_lsn > %s::pg_lsn", (second_lsn, first_lsn)).fetchone()[0]
    assert changes(pg_cluster, db, slot) == []  # the insert is in the new snapshot, not in the stream


def test_advancing_forgets_what_came_before(pg_cluster: Cluster, db: str) -> None:
    source = pg_target(pg_cluster, db)
    slot = slot_name_for(f"adv-{db}")
    with slot_with_snapshot(source, slot):
        pass
    write(pg_cluster, db, "INSERT INTO t VALUES (5)")
    with psycopg.connect(pg_cluster.dsn(db), autocommit=True) as conn:
        middle = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    write(pg_cluster, db, "INSERT INTO t VALUES (6)")
    assert len(changes(pg_cluster, db, slot)) == 2
    assert len(changes(pg_cluster, db, slot)) == 2, "peeking must not consume"
    advance_slot(source, slot, middle)
    assert changes(pg_cluster, db, slot) == ["table public.t: INSERT: id[integer]:6"]
    info = slot_info(source, slot)
    assert info is not None and info.confirmed_flush_lsn == middle


def test_drop_slot_reports_whether_there_was_one(pg_cluster: Cluster, db: str) -> None:
    source = pg_target(pg_cluster, db)
    slot = slot_name_for(f"drop-{db}")
    with slot_with_snapshot(source, slot):
        pass
    assert drop_slot(source, slot) is True
    assert slot_info(source, slot) is None
    assert drop_slot(source, slot) is False


def test_wedsync_slots_lists_only_ours_with_the_wal_they_retain(pg_cluster: Cluster, db: str) -> None:
    source = pg_target(pg_cluster, db)
    ours = slot_name_for(f"wal-{db}")
    foreign = f"other_{uuid.uuid4().hex[:10]}"
    with slot_with_snapshot(source, ours):
        pass
    write(pg_cluster, db, f"SELECT pg_create_logical_replication_slot('{foreign}', 'test_decoding')")
    before = {s.name: s for s in wedsync_slots(source)}[ours].retained_wal_bytes
    write(pg_cluster, db, "CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g")
    listed = {s.name: s for s in wedsync_slots(source)}
    assert ours in listed and foreign not in listed
    assert all(name.startswith(SLOT_PREFIX) for name in listed)
    assert listed[ours].retained_wal_bytes >= before + 1_000_000  # ~1.5 MB of WAL written since
    assert listed[ours].restart_lsn and not listed[ours].active


def test_a_role_without_replication_is_told_why(pg_cluster: Cluster, db: str) -> None:
    assert check_logical_decoding(pg_target(pg_cluster, db)) is None  # superuser on a wal_level=logical cluster
    role = f"norepl_{uuid.uuid4().hex[:8]}"
    pg_cluster.psql("-c", f"CREATE ROLE {role} LOGIN NOSUPERUSER NOREPLICATION")
    try:
        plain = PgTarget(port=pg_cluster.port, user=role, dbname=db, label="plain_user")
        why = check_logical_decoding(plain)
        assert why == "the backup user has neither SUPERUSER nor REPLICATION"
        with pytest.raises(ConfigError) as e, slot_with_snapshot(plain, slot_name_for(f"role-{db}")):
            pass
        assert "plain_user" in str(e.value) and "REPLICATION" in str(e.value)
        pg_cluster.psql("-c", f"ALTER ROLE {role} REPLICATION")
        assert check_logical_decoding(plain) is None
    finally:
        pg_cluster.psql("-c", f"DROP ROLE {role}")
