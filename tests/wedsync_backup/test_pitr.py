"""Point-in-time recovery: random write histories with backups and marked moments in between, restored to a
marked moment (equal to a clone of the source taken then) and to the latest capture (equal to the source).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError, WedSyncError
from wedsync_backup.logical.ddl import remove_ddl_capture
from wedsync_backup.pitr import apply_chain, plan_chain, restore_to_point
from wedsync_backup.repository import committed_manifests
from wedsync_backup.restore import interrupted_restore, restore_backup, target_contents

from devstack.postgres import Cluster
from tests.fixtures.ddl import user_schema_dump
from tests.wedsync_backup.test_export import db_state, local_store
from tests.wedsync_backup.test_incremental import SCHEMA, Chain, drop_db, new_db, rows, write

PITR_SCHEMA = """
CREATE TABLE pk (id bigserial PRIMARY KEY, v text, n int);
CREATE TABLE nopk (a int, b text, f float8, j jsonb, ts timestamptz, by bytea, arr int[]);
ALTER TABLE nopk REPLICA IDENTITY FULL;
CREATE TABLE toast (id serial PRIMARY KEY, small text, big text);
ALTER TABLE toast ALTER COLUMN big SET STORAGE EXTERNAL;  -- > 2 kB: out of line, uncompressed
CREATE TABLE part (id serial, k int NOT NULL, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE part_lo PARTITION OF part FOR VALUES FROM (0) TO (100);
CREATE TABLE part_hi PARTITION OF part FOR VALUES FROM (100) TO (200);
ALTER TABLE part_hi REPLICA IDENTITY FULL;  -- one leaf matched by key, the other by the whole old row
INSERT INTO pk (v, n) VALUES ('first', 1), ('it''s', 2), (NULL, 3);
INSERT INTO nopk (a, b, f) VALUES (1, 'dup', 0.5), (1, 'dup', 0.5), (2, NULL, NULL);
INSERT INTO toast (small, big) VALUES ('s1', repeat(md5('seed-1'), 300)), ('s2', repeat(md5('seed-2'), 300));
INSERT INTO part (k, v) VALUES (5, 'low'), (150, 'high');
"""
SEQUENCE_TABLES = ("pk", "toast", "part")  # each has an id column owned by its sequence <table>_id_seq


def big(seed: int) -> str:
    """> 8 kB, different per seed."""
    return hashlib.sha256(str(seed).encode()).hexdigest() * 150


def nth(table: str, cols: str = "ctid") -> str:
    """SQL picking one row of ``table`` by position %(r)s in a stable order: any history stays valid."""
    count = f"greatest((SELECT count(*) FROM {table}), 1)"
    return f"(SELECT {cols} FROM {table} ORDER BY {cols} OFFSET mod(%(r)s, {count}) LIMIT 1)"


def w(stmt: str, **params: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """A write: SQL with named parameters drawn from ``params``."""
    return st.fixed_dictionaries(params).map(lambda p: (stmt, p))


TEXT = st.sampled_from(["", "it's", 'say "hi"', "back\\slash", "two\nlines", "😀 emoji", "null"]) | st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
R = st.integers(0, 50)
BIG = st.integers(0, 10**6).map(big)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.1, -0.0, 1e300])
JSON = st.dictionaries(st.sampled_from(["k", "a b", "é"]), TEXT | st.integers(), max_size=2).map(Jsonb)
WHEN = st.datetimes(datetime(1990, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC))
NOPK_INSERT = (
    "INSERT INTO nopk SELECT %(a)s, %(b)s, %(f)s, %(j)s, %(ts)s, %(by)s, %(arr)s FROM generate_series(1, %(copies)s)"
)
ROW_WRITES = st.one_of(  # writes that change rows only (no TRUNCATE: it writes a catalog row too)
    w("INSERT INTO pk (v, n) VALUES (%(v)s, %(n)s)", v=TEXT, n=st.integers(0, 9)),
    w(f"UPDATE pk SET v = %(v)s WHERE id = {nth('pk', 'id')}", r=R, v=TEXT),
    w(f"UPDATE pk SET id = id + 100000 WHERE id = {nth('pk', 'id')}", r=R),  # a new key: old-key is sent
    w(f"DELETE FROM pk WHERE id = {nth('pk', 'id')}", r=R),
    w(
        NOPK_INSERT,
        a=st.integers(0, 4),
        b=st.none() | TEXT,
        f=st.none() | FLOATS,
        j=st.none() | JSON,
        ts=st.none() | WHEN,
        by=st.none() | st.binary(max_size=6),
        arr=st.none() | st.lists(st.none() | st.integers(-3, 3), max_size=3),
        copies=st.integers(1, 2),  # duplicate rows
    ),
    w(f"UPDATE nopk SET b = %(b)s WHERE ctid = {nth('nopk')}", r=R, b=TEXT),
    w(f"UPDATE nopk SET f = %(f)s WHERE a = {nth('nopk', 'a')}", r=R, f=FLOATS),  # several rows, duplicates too
    w(f"DELETE FROM nopk WHERE ctid = {nth('nopk')}", r=R),
    w("INSERT INTO toast (small, big) VALUES (%(s)s, %(big)s)", s=TEXT, big=BIG),
    w(f"UPDATE toast SET small = %(s)s WHERE id = {nth('toast', 'id')}", r=R, s=TEXT),  # big: unchanged-toast-datum
    w(f"UPDATE toast SET big = %(big)s WHERE id = {nth('toast', 'id')}", r=R, big=BIG),
    w(f"UPDATE toast SET id = id + 100000 WHERE id = {nth('toast', 'id')}", r=R),
    w(f"DELETE FROM toast WHERE id = {nth('toast', 'id')}", r=R),
    w("INSERT INTO part (k, v) VALUES (%(k)s, %(v)s)", k=st.integers(0, 199), v=TEXT),
    w(f"UPDATE part SET k = %(k)s WHERE (id, k) = {nth('part', 'id, k')}", r=R, k=st.integers(0, 199)),  # moves
    w(f"UPDATE part SET v = %(v)s WHERE (id, k) = {nth('part', 'id, k')}", r=R, v=TEXT),
    w(f"DELETE FROM part WHERE (id, k) = {nth('part', 'id, k')}", r=R),
)
WRITES = st.one_of(
    ROW_WRITES,
    st.builds(
        lambda tables, restart: (f"TRUNCATE {', '.join(sorted(tables))}{' RESTART IDENTITY' if restart else ''}", {}),
        st.sets(st.sampled_from(["pk", "nopk", "toast", "part"]), min_size=1, max_size=3),
        st.booleans(),
    ),
)
# Schema changes at random positions (each replayed where it happened), and writes that use what they add.
DDL = st.sampled_from(
    [
        "ALTER TABLE pk ADD COLUMN IF NOT EXISTS extra text DEFAULT 'd'",
        "ALTER TABLE pk DROP COLUMN IF EXISTS extra",
        "ALTER TABLE pk RENAME COLUMN n TO n2",
        "ALTER TABLE pk RENAME COLUMN n2 TO n",
        "ALTER TABLE nopk ALTER COLUMN a TYPE bigint",
        "ALTER TABLE nopk ALTER COLUMN a TYPE int",
        "CREATE TABLE IF NOT EXISTS extra_t (id int PRIMARY KEY, v text)",
        "ALTER TABLE extra_t RENAME TO extra_r",
        "ALTER TABLE extra_r RENAME TO extra_t",
        "DROP TABLE IF EXISTS extra_t",
        "CREATE INDEX IF NOT EXISTS pk_v_idx ON pk (v)",
        "ALTER TABLE pk ADD CONSTRAINT pk_n_small CHECK (n < 100)",
    ]
).map(lambda stmt: (stmt, {}))
AFTER_DDL = st.one_of(
    w("INSERT INTO extra_t VALUES (%(id)s, %(v)s) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v", id=R, v=TEXT),
    w("DELETE FROM extra_t WHERE id = %(id)s", id=R),
    w(f"UPDATE pk SET extra = %(v)s WHERE id = {nth('pk', 'id')}", r=R, v=TEXT),
    w("INSERT INTO pk (v, n2) VALUES (%(v)s, %(n)s)", v=TEXT, n=st.integers(0, 9)),
)
SCHEMA_TX = st.tuples(st.lists(WRITES | AFTER_DDL, max_size=2), DDL, st.lists(WRITES | AFTER_DDL, max_size=2)).map(
    lambda p: [*p[0], p[1], *p[2]]
)
# A step: one transaction of 1-4 writes (6 in 11), one with a schema change among writes (1 in 11), a backup
# run (2 in 11) or a mark (2 in 11, at most MAX_MARKS).
STEP = st.tuples(st.integers(0, 10), st.lists(WRITES, min_size=1, max_size=4), SCHEMA_TX).map(
    lambda p: (
        ("tx", p[1]) if p[0] < 6 else ("tx", p[2]) if p[0] < 7 else ("backup", None) if p[0] < 9 else ("mark", None)
    )
)
# a write that does not fit the schema of its moment (a renamed column, a dropped table) rolls its transaction
# back: the history stays valid, with or without it
SCHEMA_MISFITS = (
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedTable,
    psycopg.errors.DuplicateObject,
    psycopg.errors.DuplicateTable,
    psycopg.errors.CheckViolation,
)
MAX_MARKS = 3  # each mark clones the database: keep the example fast


def run_tx(conn: psycopg.Connection, writes: list[tuple[str, dict[str, Any]]]) -> None:
    try:
        with conn.transaction():
            for stmt, params in writes:
                conn.execute(stmt, params)
    except SCHEMA_MISFITS:
        pass


def mark(chain: Chain, clones: list[tuple[datetime, str]]) -> None:
    """Record the moment, then clone the source as it is at that moment (nobody may be connected to it)."""
    time.sleep(0.02)
    at = datetime.now(UTC)
    time.sleep(0.02)
    name = f"clone_{uuid.uuid4().hex[:10]}"
    chain.restored.append(name)  # dropped with the chain
    chain.cluster.create_database(name, template=chain.db)
    clones.append((at, name))


def assert_restored(cluster: Cluster, restored: str, expected: str) -> None:
    assert user_schema_dump(cluster, restored) == user_schema_dump(cluster, expected)
    got_rows, got_seqs = db_state(cluster, restored)
    want_rows, _ = db_state(cluster, expected)
    assert got_rows == want_rows
    with psycopg.connect(cluster.dsn(expected)) as conn:
        for table in SEQUENCE_TABLES:
            seq = f"public.{table}_id_seq"
            top = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
            assert got_seqs[seq][0] >= top, f"{seq} would hand out an id that exists"


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(STEP, min_size=6, max_size=20), data=st.data())
def test_restore_to_any_marked_moment_and_to_the_latest_capture(
    pg_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, Any]], data: st.DataObject
) -> None:
    marks = [i for i, (kind, _) in enumerate(steps) if kind == "mark"]
    for i in marks[MAX_MARKS:]:
        steps[i] = ("backup", None)
    if not marks:
        steps.insert(data.draw(st.integers(0, len(steps)), label="mark at"), ("mark", None))
    db = new_db(pg_cluster, PITR_SCHEMA)
    chain = Chain(pg_cluster, db, local_store(tmp_path_factory.mktemp("pitr") / "primary"), Keyring(os.urandom(32)))
    clones: list[tuple[datetime, str]] = []
    conn: psycopg.Connection | None = None
    try:
        chain.start()
        for kind, writes in steps:
            if kind == "tx":
                conn = conn or psycopg.connect(pg_cluster.dsn(db), autocommit=True, options="-c synchronous_commit=on")
                run_tx(conn, writes)
            elif kind == "backup":
                chain.backup()
            else:
                if conn is not None:
                    conn.close()
                    conn = None
                mark(chain, clones)
        if conn is not None:
            conn.close()
            conn = None
        chain.backup()  # the marks must lie inside the restorable window

        at, clone = data.draw(st.sampled_from(clones), label="restore to mark")
        assert_restored(pg_cluster, chain.restore_to(at), clone)
        assert_restored(pg_cluster, chain.restore(), db)  # latest: the whole chain
    finally:
        if conn is not None:
            conn.close()
        chain.close()
        drop_db(pg_cluster, db)


# --- refusals -------------------------------------------------------------------------------------------


@pytest.fixture
def chain(pg_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """A started chain on a fresh source (as in test_incremental); everything it made is dropped after."""
    db = new_db(pg_cluster, SCHEMA)
    c = Chain(pg_cluster, db, local_store(tmp_path_factory.mktemp("pitr") / "primary"), Keyring(os.urandom(32)))
    try:
        c.start()
        yield c
    finally:
        c.close()
        drop_db(pg_cluster, db)


def test_changes_to_a_table_the_full_lacks_are_refused_naming_it(chain: Chain) -> None:
    remove_ddl_capture(chain.source)  # the CREATE TABLE goes uncaptured: the chain ends before it
    write(chain.cluster, chain.db, "CREATE TABLE public.seating_plan (id int PRIMARY KEY, tbl text)")
    write(chain.cluster, chain.db, "INSERT INTO public.seating_plan VALUES (1, 'head table')")
    m = chain.backup()
    assert m.extra["chain_end"] and m.extra["chain_end"]["replay_transactions"] == 0
    target = chain.new_target()
    assert chain.full is not None
    restore_backup(chain.full, chain.store, chain.ring, target)
    # the stream past the chain's end still holds the rows: replayed regardless, they are refused, never guessed
    unbounded = dataclasses.replace(m, extra={**m.extra, "chain_end": None})
    with pytest.raises(IntegrityError) as e:
        apply_chain(target, [(unbounded, chain.store)], chain.ring)
    assert "public.seating_plan" in str(e.value)
    assert "schema changed" in str(e.value)
    # restore_to_point authenticates every manifest first: the edited one is refused, the target stays empty
    empty = chain.new_target()
    with pytest.raises(IntegrityError, match="failed authentication"):
        restore_to_point(plan_chain([chain.full, unbounded], None), chain.store, chain.ring, empty)
    assert target_contents(empty) == []
    # as captured, the chain ends before the change: the latest restore is the database before it
    assert "public.seating_plan" not in rows(chain.cluster, chain.restore_to(None))


def test_a_replay_that_fails_puts_the_target_back_as_it_was(chain: Chain) -> None:
    """The full backup is in, the replay of a damaged incremental fails: the target is empty again, its schema
    public as it was, and no restore mark is left (the mark kept through the replay told how to put it back)."""
    write(chain.cluster, chain.db, "INSERT INTO guests (name, seat) VALUES ('late', 7)")
    m = chain.backup()
    (obj,) = m.objects()
    data = bytearray(chain.store.get_bytes(obj.key))
    data[len(data) // 2] ^= 0xFF
    chain.store.put_bytes(obj.key, bytes(data))
    target = chain.new_target()
    before = user_schema_dump(chain.cluster, target.dbname)
    with pytest.raises(WedSyncError):
        restore_to_point(plan_chain(committed_manifests(chain.store), None), chain.store, chain.ring, target)
    assert target_contents(target) == [] and interrupted_restore(target) is None
    assert user_schema_dump(chain.cluster, target.dbname) == before


def test_plan_chain_refuses_moments_outside_the_chain_naming_the_window(chain: Chain) -> None:
    write(chain.cluster, chain.db, "INSERT INTO guests (name) VALUES ('x')")
    chain.backup()
    last = chain.backup()
    manifests = committed_manifests(chain.store)
    assert chain.full is not None
    start = datetime.fromisoformat(chain.full.consistent_point["time"])
    end = datetime.fromisoformat(last.extra["captured_at"])
    window = f"{start.isoformat()} to {end.isoformat()}"
    for outside in (start - timedelta(seconds=1), end + timedelta(seconds=1), end + timedelta(days=3)):
        with pytest.raises(IntegrityError) as e:
            plan_chain(manifests, outside)
        assert f"No backup covers {outside.isoformat()}" in str(e.value)
        assert window in str(e.value)
    inside = plan_chain(manifests, start + (end - start) / 2)
    assert inside.full.backup_id == chain.full_id
    assert plan_chain(manifests, end).increments == chain.increments
    assert plan_chain(manifests, None).increments == chain.increments


def test_plan_chain_without_a_full_says_so() -> None:
    with pytest.raises(IntegrityError, match="No complete full backup"):
        plan_chain([], None)


def test_an_update_of_a_table_without_replica_identity_is_never_applied_to_the_wrong_row(chain: Chain) -> None:
    write(chain.cluster, chain.db, "CREATE TABLE plain (x int)")
    chain.full_id = "full-2"  # a new chain that has the table
    chain.start()
    write(chain.cluster, chain.db, "INSERT INTO plain VALUES (1), (2)")
    write(chain.cluster, chain.db, "UPDATE plain SET x = 2 WHERE x = 1")
    try:
        chain.backup()
        restored = chain.restore()
    except IntegrityError:
        return  # refusing is fine: never a wrong result
    assert rows(chain.cluster, restored)["public.plain"] == rows(chain.cluster, chain.db)["public.plain"]
