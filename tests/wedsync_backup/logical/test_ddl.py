"""Schema changes in the change stream: captured and replayed at their position, or the chain ends just before.

Each test runs a real chain (full backup with its slot, writes, DDL, an incremental) on the session cluster and
compares restores with ``CREATE DATABASE ... TEMPLATE`` clones of the source taken at marked moments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.incremental import read_changes, schema_fingerprint
from wedsync_backup.logical.ddl import (
    CAPTURE_SCHEMA,
    Ddl,
    capture_state,
    fingerprint_query,
    install_ddl_capture,
    remove_ddl_capture,
)
from wedsync_backup.logical.statements import Unsplittable, ddl_statements, replayable, split_statements
from wedsync_backup.pitr import plan_chain
from wedsync_backup.repository import committed_manifests
from wedsync_backup.restore import target_contents

from devstack.postgres import Cluster
from tests.fixtures.ddl import user_schema_dump
from tests.wedsync_backup.test_export import local_store, pg_target
from tests.wedsync_backup.test_incremental import SCHEMA, Chain, drop_db, new_db, rows, write
from tests.wedsync_backup.test_pitr import PITR_SCHEMA, ROW_WRITES, SCHEMA_MISFITS

# --- statements (no database) ------------------------------------------------------------------------------


def test_split_keeps_literals_comments_and_dollar_quotes_whole() -> None:
    q = (
        "INSERT INTO t VALUES ('a;b', E'it\\'s;', \"we;ird\"); -- c;d\n"
        "ALTER TABLE t ADD COLUMN x int /* a; /* nested; */ b */;"
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$;;"
        "  SET search_path = x"
    )
    parts = split_statements(q)
    assert [p.words[0] for p in parts] == ["INSERT", "ALTER", "CREATE", "SET"]
    assert parts[1].text == "-- c;d\nALTER TABLE t ADD COLUMN x int /* a; /* nested; */ b */"
    assert [s.words[0] for s in ddl_statements(q)] == ["ALTER", "CREATE"]
    assert ddl_statements(q)[1].matches("CREATE FUNCTION")


def test_statements_match_their_command_tags() -> None:
    (s,) = ddl_statements("create unique index concurrently on t (x)")
    assert s.matches("CREATE INDEX") and not s.matches("CREATE TABLE")
    assert replayable(s.text) == "create unique index on t (x)"
    (v,) = ddl_statements("CREATE OR REPLACE TEMP VIEW v AS SELECT 1")
    assert v.matches("CREATE VIEW")
    assert ddl_statements("GRANT admin TO bob; CREATE ROLE x; ALTER SYSTEM SET a = 1") == []
    assert [s.words[0] for s in ddl_statements("GRANT SELECT ON t TO bob; COMMENT ON TABLE t IS 'x'")] == [
        "GRANT",
        "COMMENT",
    ]
    with pytest.raises(Unsplittable):
        split_statements("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END")


# --- chains on a real source ---------------------------------------------------------------------------------


@pytest.fixture
def source(pg_cluster: Cluster) -> Iterator[str]:
    db = new_db(pg_cluster, SCHEMA)
    yield db
    drop_db(pg_cluster, db)


def make_chain(cluster: Cluster, db: str, tmp_path: Path) -> Chain:
    c = Chain(cluster, db, local_store(tmp_path / f"primary-{uuid.uuid4().hex[:6]}"), Keyring(os.urandom(32)))
    c.start()
    return c


@contextlib.contextmanager
def uncaptured_chain(cluster: Cluster, db: str, tmp_path: Path) -> Iterator[Chain]:
    """A chain whose source has lost the DDL capture (a source without SUPERUSER, or removed by hand)."""
    c = make_chain(cluster, db, tmp_path)
    try:
        assert remove_ddl_capture(c.source)
        yield c
    finally:
        c.close()


def mark(c: Chain) -> tuple[datetime, str]:
    """A moment strictly between the writes before and after it, and the source as it is then."""
    time.sleep(0.05)
    at = datetime.now(UTC)
    time.sleep(0.05)
    name = f"clone_{uuid.uuid4().hex[:10]}"
    c.cluster.create_database(name, template=c.db)
    c.restored.append(name)
    return at, name


def assert_same(cluster: Cluster, restored: str, expected: str) -> None:
    assert user_schema_dump(cluster, restored) == user_schema_dump(cluster, expected)
    assert rows(cluster, restored) == rows(cluster, expected)


def assert_restores_as(c: Chain, clone: str, *moments: datetime | None) -> None:
    """Restores to each moment (None: latest) equal ``clone``."""
    for at in moments:
        assert_same(c.cluster, c.restore_to(at), clone)


def test_a_schema_change_travels_in_the_chain_and_both_sides_restore_exactly(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    c = make_chain(pg_cluster, source, tmp_path)
    try:
        write(c.cluster, c.db, "INSERT INTO guests (name, seat) VALUES ('before', 1)")
        before, clone_before = mark(c)
        write(c.cluster, c.db, "ALTER TABLE guests ADD COLUMN email text DEFAULT 'none'")
        write(c.cluster, c.db, "INSERT INTO guests (name, email) VALUES ('after', 'a@example.com')")
        write(c.cluster, c.db, "UPDATE guests SET email = 'b@example.com' WHERE name = 'before'")
        after, clone_after = mark(c)
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN body TO text_body")
        write(c.cluster, c.db, "CREATE TABLE seating (id int PRIMARY KEY, guest int REFERENCES guests)")
        write(c.cluster, c.db, "INSERT INTO seating VALUES (1, 1)")
        install_ddl_capture(c.source)  # as the next full backup's preflight does, while this chain runs
        m = c.backup()
        assert m.extra["chain_end"] is None
        assert [d["tag"] for d in m.extra["schema_changes"]] == ["ALTER TABLE", "ALTER TABLE", "CREATE TABLE"]
        assert any(isinstance(ev, Ddl) for _, _, ev in read_changes(m, c.store, c.ring))
        assert_same(c.cluster, c.restore_to(before), clone_before)
        assert_same(c.cluster, c.restore_to(after), clone_after)
        assert_same(c.cluster, c.restore_to(None), c.db)
        # the capture is not user schema: not in the backup, not in any restore
        assert CAPTURE_SCHEMA not in user_schema_dump(c.cluster, c.restored[-1])
        assert not any(CAPTURE_SCHEMA in x for x in target_contents(pg_target(c.cluster, c.restored[-1])))
    finally:
        c.close()


def test_several_statements_in_one_query_replay_one_by_one(pg_cluster: Cluster, source: str, tmp_path: Path) -> None:
    c = make_chain(pg_cluster, source, tmp_path)
    try:
        write(
            c.cluster,
            c.db,
            "INSERT INTO guests (name) VALUES ('x;y'); ALTER TABLE guests ADD COLUMN note text; "
            "INSERT INTO guests (name, note) VALUES ('z', 'n'); CREATE TEMP TABLE scratch (x int); "
            "CREATE INDEX guests_note ON guests (note); SET search_path = public, pg_temp; "
            "ALTER TABLE guests ALTER COLUMN seat TYPE bigint",
        )
        with psycopg.connect(c.cluster.dsn(c.db), autocommit=True, options="-c synchronous_commit=on") as conn:
            conn.execute("CREATE SCHEMA app")
            conn.execute("SET search_path = app")
            conn.execute("CREATE TABLE plan (id int PRIMARY KEY, what text)")  # lands in app: path recorded
            conn.execute("INSERT INTO plan VALUES (1, 'dance')")
            conn.execute("ALTER TABLE plan RENAME TO plans")
            conn.execute("DROP INDEX public.guests_note")
        m = c.backup()
        assert m.extra["chain_end"] is None, m.extra["chain_end"]
        tags = [d["tag"] for d in m.extra["schema_changes"]]
        assert tags == [
            "ALTER TABLE",
            "CREATE INDEX",
            "ALTER TABLE",
            "CREATE SCHEMA",
            "CREATE TABLE",
            "ALTER TABLE",
            "DROP INDEX",
        ]
        assert_same(c.cluster, c.restore_to(None), c.db)
    finally:
        c.close()


def test_ddl_inside_a_function_ends_the_chain_before_it(pg_cluster: Cluster, source: str, tmp_path: Path) -> None:
    c = make_chain(pg_cluster, source, tmp_path)
    try:
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('kept')")
        before, clone_before = mark(c)
        write(c.cluster, c.db, "DO $$ BEGIN EXECUTE 'ALTER TABLE guests ADD COLUMN z int'; END $$")
        write(c.cluster, c.db, "INSERT INTO guests (name, z) VALUES ('lost', 1)")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "inside a function or DO block" in end["reason"], end
        assert m.extra["transactions"] == 1 and end["replay_transactions"] == 1
        assert datetime.fromisoformat(end["covered_until"]) > before
        assert_same(c.cluster, c.restore_to(before), clone_before)
        assert_same(c.cluster, c.restore_to(None), clone_before)
        with pytest.raises(IntegrityError, match="No backup covers"):
            plan_chain(committed_manifests(c.store), datetime.now(UTC))
    finally:
        c.close()


def test_without_the_capture_the_chain_ends_at_the_change(pg_cluster: Cluster, source: str, tmp_path: Path) -> None:
    """The fallback: everything before the uncaptured change restorable, the gap after it reported."""
    c = make_chain(pg_cluster, source, tmp_path)
    try:
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a0')")
        c.backup()  # its flush transaction and the removal below are ours: neither may look like a change
        assert remove_ddl_capture(c.source) and not capture_state(c.source).installed
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a1')")
        write(c.cluster, c.db, "UPDATE guests SET seat = 7 WHERE name = 'a1'")
        write(c.cluster, c.db, "ANALYZE guests")  # as autovacuum does: writes no rows, yet is no schema change
        before, clone_before = mark(c)
        write(c.cluster, c.db, "ALTER TABLE guests ADD COLUMN email text")
        ddl_done = datetime.now(UTC)
        write(c.cluster, c.db, "INSERT INTO guests (name, email) VALUES ('b1', 'b@example.com')")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "not captured" in end["reason"], end
        assert m.extra["transactions"] == 2 and m.extra["per_table"] == {"public.guests": {"insert": 1, "update": 1}}
        assert before < datetime.fromisoformat(end["covered_until"]) < ddl_done
        assert_same(c.cluster, c.restore_to(before), clone_before)
        assert_same(c.cluster, c.restore_to(None), clone_before)
        with pytest.raises(IntegrityError, match="No backup covers") as e:
            plan_chain(committed_manifests(c.store), ddl_done)
        assert end["covered_until"] in str(e.value)  # the gap: the restorable range ends there
    finally:
        c.close()


def test_a_change_that_bypassed_the_capture_ends_the_chain_before_it(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    c = make_chain(pg_cluster, source, tmp_path)
    try:
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a1')")
        before, clone_before = mark(c)
        # event triggers do not fire in replica mode: this change is not captured
        write(c.cluster, c.db, "SET session_replication_role = replica; ALTER TABLE notes ADD COLUMN hidden int")
        write(c.cluster, c.db, "ALTER TABLE guests ADD COLUMN email text")  # captured, but after an uncaptured one
        write(c.cluster, c.db, "INSERT INTO guests (name, email) VALUES ('b1', 'b@example.com')")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "was not captured" in end["reason"], end
        assert m.extra["transactions"] == 1
        assert_restores_as(c, clone_before, before, None)
    finally:
        c.close()


# Changes a restore brings back that write no row and that version 2 of the fingerprint did not see.
ROWLESS_CHANGES = [
    "GRANT SELECT ON guests TO PUBLIC",
    "COMMENT ON TABLE guests IS 'the guest list'",
    "CREATE TYPE mood AS ENUM ('happy')",
    "CREATE SCHEMA extra",
]


def test_rowless_changes_travel_in_the_chain(pg_cluster: Cluster, source: str, tmp_path: Path) -> None:
    """With the capture, grants, comments, types, schemas and defaults replay at their position."""
    c = make_chain(pg_cluster, source, tmp_path)
    try:
        write(c.cluster, c.db, "INSERT INTO guests (name, seat) VALUES ('a0', 1)")
        before, clone_before = mark(c)
        for ddl in [*ROWLESS_CHANGES, "ALTER TABLE guests ALTER COLUMN seat SET DEFAULT 7"]:
            write(c.cluster, c.db, ddl)
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a1')")
        m = c.backup()
        assert m.extra["chain_end"] is None and len(m.extra["schema_changes"]) == 5
        assert_same(c.cluster, c.restore_to(before), clone_before)
        assert_same(c.cluster, c.restore_to(None), c.db)
    finally:
        c.close()


def test_a_chain_started_under_fingerprint_version_2_continues_after_the_upgrade(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """A full backup of the previous version recorded a v2 fingerprint, and its capture emits v2: the chain's
    captures keep comparing v2 with v2 until the next full backup starts a v3 chain (no chain ends on upgrade)."""
    c = make_chain(pg_cluster, source, tmp_path)
    try:
        assert c.full is not None and c.full.chain_info is not None
        started = c.full.chain_info
        v2 = started.fingerprint(2)
        assert v2 and v2.startswith("v2:") and str(started.schema_fingerprint).startswith("v3:")
        c.full = dataclasses.replace(c.full, chain=dataclasses.replace(started, schema_fingerprint=v2))
        with psycopg.connect(c.cluster.dsn(c.db), autocommit=True) as conn:  # the capture as version 2 installed it
            conn.execute("SET session_replication_role = replica")  # as an install does: not a captured change
            conn.execute(
                f"CREATE OR REPLACE FUNCTION {CAPTURE_SCHEMA}.fingerprint() RETURNS text LANGUAGE sql STABLE"
                f" SET search_path = pg_catalog AS $fp$ {fingerprint_query(version=2)} $fp$".encode()
            )
        write(c.cluster, c.db, "INSERT INTO guests (name, seat) VALUES ('a0', 1)")
        before, clone_before = mark(c)
        write(c.cluster, c.db, "ALTER TABLE guests ADD COLUMN email text")
        write(c.cluster, c.db, "INSERT INTO guests (name, email) VALUES ('a1', 'a@example.com')")
        m = c.backup()
        assert m.extra["chain_end"] is None and m.extra["schema_fingerprint"].startswith("v2:")
        assert_restores_as(c, clone_before, before)
        assert_same(c.cluster, c.restore_to(None), c.db)
    finally:
        c.close()


@pytest.mark.parametrize("ddl", ROWLESS_CHANGES)
def test_without_the_capture_a_rowless_change_ends_the_chain_before_it(
    pg_cluster: Cluster, source: str, tmp_path: Path, ddl: str
) -> None:
    """A chain never silently spans an uncaptured change, even one that writes no row and leaves the columns as
    they were (before fingerprint version 3 these passed unseen: a restore after them came back without them)."""
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        write(c.cluster, c.db, "INSERT INTO guests (name, seat) VALUES ('a0', 1)")
        before, clone_before = mark(c)
        write(c.cluster, c.db, ddl)
        changed = datetime.now(UTC)
        write(c.cluster, c.db, "INSERT INTO guests (name, seat) VALUES ('a1', 2)")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "not captured" in end["reason"], end
        assert before < datetime.fromisoformat(end["covered_until"]) < changed
        assert_restores_as(c, clone_before, before, None)


def test_without_the_capture_a_drop_among_writes_cuts_before_the_table_was_last_written(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """A DROP leaves no catalog row: a later uncaptured change must not pull the cut past it (objects.py)."""
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a0')")
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a1')")
        before, clone_before = mark(c)
        # one transaction writes the table, writes rows elsewhere and drops it; the next alters another table
        write(
            c.cluster,
            c.db,
            "INSERT INTO notes VALUES ('last', 9); INSERT INTO guests (name) VALUES ('b1'); DROP TABLE notes",
        )
        dropped = datetime.now(UTC)
        write(c.cluster, c.db, "ALTER TABLE guests ADD COLUMN email text")  # leaves rows with its xid
        write(c.cluster, c.db, "INSERT INTO guests (name, email) VALUES ('b2', 'b@example.com')")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "public.notes was dropped" in end["reason"], end
        assert end["replay_transactions"] == 2 and m.extra["transactions"] == 2
        assert m.extra["per_table"] == {"public.guests": {"insert": 2}}
        assert before < datetime.fromisoformat(end["covered_until"]) < dropped
        assert_restores_as(c, clone_before, before, None)


def test_without_the_capture_objects_dropped_and_recreated_end_the_chain_at_the_verified_point(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """An index and a table dropped and re-created the same: the fingerprint is unchanged, yet the table's rows
    are gone without a decoded DELETE. The OIDs tell; nothing in the stream places an index: the cut goes back
    to the last verified point."""
    write(pg_cluster, source, "CREATE INDEX guests_seat ON guests (seat)")
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        fingerprint = schema_fingerprint(c.source)
        _, clone_start = mark(c)
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a1')")
        write(
            c.cluster,
            c.db,
            "INSERT INTO guests (name) VALUES ('b1'); DROP INDEX guests_seat;"
            " CREATE INDEX guests_seat ON guests (seat); DROP TABLE notes; CREATE TABLE notes (body text, n int)",
        )
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('b2')")
        assert schema_fingerprint(c.source) == fingerprint
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "objects were dropped and the drop was not captured" in end["reason"], end
        assert "were dropped, and a DROP leaves no trace" in end["reason"]
        assert end["placed"] == "bounded" and "CREATE EXTENSION pg_walinspect" in m.extra["warnings"][0]
        assert end["replay_transactions"] == 0 and m.extra["transactions"] == 0
        assert_restores_as(c, clone_start, None)


def test_without_the_capture_rows_of_another_shape_end_the_chain_even_when_the_change_was_overwritten(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """A rename whose catalog row a second rename rewrote leaves no xid to find it by; the rows decoded in
    between carry the new column name, which places the cut (before the table's last row of the old shape)."""
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a0')")
        before, clone_before = mark(c)
        write(c.cluster, c.db, "INSERT INTO notes VALUES ('old shape', 1)")
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN body TO text; INSERT INTO guests (name) VALUES ('b1')")
        write(c.cluster, c.db, "CREATE INDEX guests_seat ON guests (seat)")  # leaves rows, but not of notes
        write(c.cluster, c.db, "INSERT INTO notes (text, n) VALUES ('new shape', 2)")
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN text TO body2")  # rewrites the same catalog row
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "public.notes were decoded with columns text[text], n[integer]" in end["reason"], end
        assert end["replay_transactions"] == 1
        assert_restores_as(c, clone_before, before, None)


def test_without_the_capture_a_change_a_later_change_rewrote_with_no_row_in_between_cuts_before_it(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """A rename whose catalog row a second rename rewrote, and no row of that table written in between: nothing
    is left of the first one, so the second (the first suspect) must not place the cut. The rewrite bounds it:
    the cut goes before the table's last row of its old shape."""
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a0')")
        before, clone_before = mark(c)
        write(c.cluster, c.db, "INSERT INTO notes VALUES ('old shape', 1)")
        # the first change writes rows (of another table): it looks like any other transaction
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN body TO text; INSERT INTO guests (name) VALUES ('b1')")
        renamed = datetime.now(UTC)
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN text TO body2")  # rewrites the same catalog row
        after = datetime.now(UTC)
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('b2')")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "catalog rows of table public.notes were rewritten" in end["reason"], end
        assert end["replay_transactions"] == 1 and m.extra["transactions"] == 1
        assert before < datetime.fromisoformat(end["covered_until"]) < renamed
        assert_restores_as(c, clone_before, before, None)
        for moment in (renamed, after):
            with pytest.raises(IntegrityError, match="No backup covers") as e:
                plan_chain(committed_manifests(c.store), moment)
            assert f"to {datetime.fromisoformat(end['covered_until']).isoformat()}" in str(e.value)


def test_without_the_capture_a_change_undone_by_a_later_one_still_ends_the_chain(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """A column renamed and renamed back: the fingerprint comes out equal, no object was dropped, yet moments
    between the two had another schema. The rewritten row ends the chain before the table's last old row."""
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        fingerprint = schema_fingerprint(c.source)
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a0')")
        before, clone_before = mark(c)
        write(c.cluster, c.db, "INSERT INTO notes VALUES ('old shape', 1)")
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN body TO text; INSERT INTO guests (name) VALUES ('b1')")
        renamed = datetime.now(UTC)
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN text TO body")
        assert schema_fingerprint(c.source) == fingerprint
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "were rewritten and nothing captured the change" in end["reason"], end
        assert end["replay_transactions"] == 1
        assert_restores_as(c, clone_before, before, None)
        with pytest.raises(IntegrityError, match="No backup covers"):
            plan_chain(committed_manifests(c.store), renamed)


def test_without_the_capture_a_rewritten_column_type_modifier_cuts_at_the_verified_point(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """A type modifier shows in no decoded row: when the rewritten column's full type changed, rows of the old
    shape prove nothing, and the cut goes back to the last verified point."""
    write(pg_cluster, source, "ALTER TABLE notes ADD COLUMN code varchar(5)")
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        _, clone_start = mark(c)
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a0')")
        write(
            c.cluster,
            c.db,
            "ALTER TABLE notes ALTER COLUMN code TYPE varchar(9); INSERT INTO guests (name) VALUES ('b1')",
        )
        write(c.cluster, c.db, "INSERT INTO notes VALUES ('same printed shape', 1, 'abcdefgh')")
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN code TO code2")  # rewrites the column's row
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "catalog rows of table public.notes were rewritten" in end["reason"], end
        assert end["replay_transactions"] == 0 and m.extra["transactions"] == 0
        assert_restores_as(c, clone_start, None)


def test_without_the_capture_a_column_added_then_rewritten_cuts_before_the_table_was_last_written(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """A column added, then renamed by a change that also added another one (which rewrote the table's pg_class
    row): no row of the first change is left. Only one added column, the table's pg_class row otherwise the
    same, would have placed it (see ``ChangeGuard._added_column``); two leave the cut before the table's last
    row of its old shape."""
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a0')")
        before, clone_before = mark(c)
        write(c.cluster, c.db, "INSERT INTO notes VALUES ('old shape', 1)")
        write(c.cluster, c.db, "ALTER TABLE notes ADD COLUMN d0 int; INSERT INTO guests (name) VALUES ('b1')")
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN d0 TO d; ALTER TABLE notes ADD COLUMN e int")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "catalog rows of table public.notes were rewritten" in end["reason"], end
        assert end["replay_transactions"] == 1
        assert_restores_as(c, clone_before, before, None)


def test_without_the_capture_a_function_replaced_twice_cuts_at_the_verified_point(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """CREATE OR REPLACE FUNCTION rewrites the function's row and its dependency rows: a first replacement that
    a second one rewrote leaves nothing, and nothing in the stream places a function."""
    write(pg_cluster, source, "CREATE FUNCTION seat_of(int) RETURNS int LANGUAGE sql AS 'SELECT $1'")
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        _, clone_start = mark(c)
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a0')")
        write(
            c.cluster,
            c.db,
            "CREATE OR REPLACE FUNCTION seat_of(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1';"
            " INSERT INTO guests (name) VALUES ('b1')",
        )
        write(c.cluster, c.db, "CREATE OR REPLACE FUNCTION seat_of(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 2'")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and "were rewritten, which may hide a change" in end["reason"], end
        assert end["replay_transactions"] == 0 and m.extra["transactions"] == 0
        assert_restores_as(c, clone_start, None)


# --- the same, where the WAL can be read (pg_walinspect): the cut right before the change ----------------------


def test_with_the_wal_readable_objects_dropped_and_recreated_end_the_chain_right_before_them(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """The case above, where the stream alone cuts back to the verified point: the WAL places the drops, and
    every moment before them stays restorable. The removal of the capture (ours, marked) is no suspect."""
    write(pg_cluster, source, "CREATE EXTENSION pg_walinspect; CREATE INDEX guests_seat ON guests (seat)")
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a1')")
        before, clone_before = mark(c)
        write(
            c.cluster,
            c.db,
            "INSERT INTO guests (name) VALUES ('b1'); DROP INDEX guests_seat;"
            " CREATE INDEX guests_seat ON guests (seat); DROP TABLE notes; CREATE TABLE notes (body text, n int)",
        )
        changed = datetime.now(UTC)
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('b2')")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and end["placed"] == "exact" and "(read from the WAL)" in end["reason"], end
        assert end["replay_transactions"] == 1 and m.extra["transactions"] == 1
        assert before < datetime.fromisoformat(end["covered_until"]) < changed
        assert_restores_as(c, clone_before, before, None)


@pytest.mark.parametrize(
    "change",
    [
        "CREATE OR REPLACE FUNCTION seat_of(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1'",
        # a DROP in a subtransaction: the WAL names the subtransaction, its commit the transaction decoded
        "DO $$ BEGIN BEGIN DROP VIEW seats; EXCEPTION WHEN others THEN NULL; END; END $$",
        "ALTER TABLE notes ALTER COLUMN code TYPE varchar(9)",
    ],
)
def test_with_the_wal_readable_a_change_a_later_one_rewrote_ends_the_chain_right_before_it(
    pg_cluster: Cluster, source: str, tmp_path: Path, change: str
) -> None:
    """Changes the stream cannot place (a function replaced twice, a view dropped, a type modifier changed and
    then its column renamed) end the chain right before themselves, not at the verified point."""
    write(
        pg_cluster,
        source,
        "CREATE EXTENSION pg_walinspect; ALTER TABLE notes ADD COLUMN code varchar(5);"
        " CREATE FUNCTION seat_of(int) RETURNS int LANGUAGE sql AS 'SELECT $1';"
        " CREATE VIEW seats AS SELECT seat FROM guests",
    )
    with uncaptured_chain(pg_cluster, source, tmp_path) as c:
        assert c.full is not None and c.full.chain_info is not None
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('a0')")
        write(c.cluster, c.db, "INSERT INTO notes VALUES ('a note', 1, 'abc')")
        before, clone_before = mark(c)
        write(c.cluster, c.db, f"{change}; INSERT INTO guests (name) VALUES ('b1')")
        changed = datetime.now(UTC)
        write(c.cluster, c.db, "CREATE OR REPLACE FUNCTION seat_of(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 2'")
        write(c.cluster, c.db, "ALTER TABLE notes RENAME COLUMN code TO code2")
        write(c.cluster, c.db, "INSERT INTO guests (name) VALUES ('b2')")
        m = c.backup()
        end = m.extra["chain_end"]
        assert end and end["placed"] == "exact", end
        assert end["replay_transactions"] == 2 and m.extra["transactions"] == 2
        assert before < datetime.fromisoformat(end["covered_until"]) < changed
        assert_restores_as(c, clone_before, before, None)


# Uncaptured changes, those the stream alone can place and those it cannot (a DROP of an index or a view that
# existed at the verified point, a function replaced, a column renamed and renamed back, a type modifier), each in
# a transaction among row writes. Each is made with the step's number ``n``, so that none is a no-op.
UNCAPTURED = st.sampled_from(
    [
        lambda n: [f"DROP INDEX pk_i{n}"],
        lambda n: [f"CREATE INDEX pk_new{n} ON pk (v)"],
        lambda n: [f"CREATE OR REPLACE VIEW pk_v AS SELECT id, {n} AS k FROM pk"],
        lambda n: [f"DROP VIEW pk_v{n}"],
        lambda n: [f"CREATE OR REPLACE FUNCTION n_of(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + {n}'"],
        lambda n: [f"ALTER TABLE pk ALTER COLUMN v TYPE varchar({400 + n})"],
        lambda n: ["ALTER TABLE pk RENAME COLUMN n TO n2", "ALTER TABLE pk RENAME COLUMN n2 TO n"],
        lambda n: [f"COMMENT ON TABLE nopk IS 'comment {n}'"],
        lambda n: [f"ALTER TABLE pk ADD COLUMN extra{n} text"],
    ]
)
MAX_STEPS = 14
UNCAPTURED_SCHEMA = (
    PITR_SCHEMA
    + "CREATE FUNCTION n_of(int) RETURNS int LANGUAGE sql AS 'SELECT $1';"
    + "CREATE VIEW pk_v AS SELECT id, 0 AS k FROM pk;"
    + "".join(f"CREATE INDEX pk_i{n} ON pk (n); CREATE VIEW pk_v{n} AS SELECT n FROM pk;" for n in range(MAX_STEPS))
)
WAL_STEP = st.tuples(
    st.integers(0, 9), st.lists(ROW_WRITES, min_size=1, max_size=3), UNCAPTURED, st.lists(ROW_WRITES, max_size=2)
).map(lambda p: ("tx", p[1]) if p[0] < 6 else ("change", (p[3], p[2], p[1][:1])) if p[0] < 8 else ("mark", None))


def committed(conn: psycopg.Connection, writes: list[tuple[str, dict[str, Any]]]) -> bool:
    try:
        with conn.transaction():
            for stmt, params in writes:
                conn.execute(stmt, params)
        return True
    except SCHEMA_MISFITS:
        return False


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: seconds per example, minutes to shrink
)
@given(steps=st.lists(WAL_STEP, min_size=4, max_size=MAX_STEPS), data=st.data())
@pytest.mark.parametrize("wal", [True, False], ids=["wal-readable", "stream-only"])
def test_any_uncaptured_change_ends_the_chain_never_after_it_and_right_before_it_where_the_wal_is_readable(
    pg_cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
    wal: bool,
    steps: list[tuple[str, Any]],
    data: st.DataObject,
) -> None:
    """Random row writes, uncaptured schema changes among them, marks; one capture at the end. The chain ends
    before the first change's transaction, never after it, and every mark up to the end restores exactly. With
    the WAL readable it ends right before it (covered up to its start, not up to its commit), and latest is the
    source just before it."""
    db = new_db(pg_cluster, UNCAPTURED_SCHEMA + ("CREATE EXTENSION pg_walinspect;" if wal else ""))
    try:
        with uncaptured_chain(pg_cluster, db, tmp_path_factory.mktemp("wal")) as c:
            clones: list[tuple[datetime, str]] = []
            change: tuple[datetime, datetime] | None = None  # the first committed change: began, committed
            for n, (kind, writes) in enumerate(steps):
                if kind == "change":
                    before_it, make, after_it = writes
                    writes = [*before_it, *((stmt, {}) for stmt in make(n)), *after_it]
                if kind == "mark":
                    clones.append(mark(c))
                    continue
                if kind == "change" and change is None:
                    just_before = mark(c)
                    began = datetime.now(UTC)
                with psycopg.connect(pg_cluster.dsn(db), autocommit=True, options="-c synchronous_commit=on") as conn:
                    done = committed(conn, writes)
                if kind == "change" and change is None and done:
                    change = (began, datetime.now(UTC))
                    clones.append(just_before)
                    at_change = just_before[1]
            m = c.backup()
            end = m.extra["chain_end"]
            if change is None:
                assert end is None
                assert_same(c.cluster, c.restore_to(None), c.db)
            else:
                assert end and end["placed"] == ("exact" if wal else "bounded"), end
                covered = datetime.fromisoformat(end["covered_until"])
                assert covered < change[1]
                if wal:
                    assert change[0] <= covered
                    assert_same(c.cluster, c.restore_to(None), at_change)  # the source just before the change
                kept = [(at, clone) for at, clone in clones if at <= covered]
                if kept:
                    at, clone = data.draw(st.sampled_from(kept), label="restore to mark")
                    assert_same(c.cluster, c.restore_to(at), clone)
                with pytest.raises(IntegrityError, match="No backup covers"):
                    plan_chain(committed_manifests(c.store), change[1])
    finally:
        drop_db(pg_cluster, db)


def test_install_status_and_remove(pg_cluster: Cluster, source: str) -> None:
    target = pg_target(pg_cluster, source)
    state = install_ddl_capture(target, ("scratch",))
    assert state.installed and capture_state(target).installed
    fp = schema_fingerprint(target)
    assert install_ddl_capture(target).installed  # idempotent
    assert schema_fingerprint(target) == fp  # our schema is never user schema
    assert remove_ddl_capture(target)
    assert not capture_state(target).installed
    assert "_wedsync_backup" not in pg_cluster.psql("-Atc", "SELECT nspname FROM pg_namespace", dbname=source)
    assert not remove_ddl_capture(target)
    role = f"nosuper_{uuid.uuid4().hex[:6]}"
    pg_cluster.psql("-c", f'CREATE ROLE {role} LOGIN REPLICATION; GRANT ALL ON DATABASE "{source}" TO {role}')
    try:
        weak = pg_target(pg_cluster, source).__class__(
            host="127.0.0.1", port=pg_cluster.port, user=role, dbname=source, label="wedsync_source"
        )
        state = install_ddl_capture(weak)
        assert not state.installed and "SUPERUSER" in (state.reason or "")
        assert not capture_state(target).installed
    finally:
        pg_cluster.psql("-c", f'REVOKE ALL ON DATABASE "{source}" FROM {role}; DROP ROLE {role}')


def test_schema_changes_committed_while_a_capture_stops_never_end_the_chain(
    pg_cluster: Cluster, source: str, tmp_path: Path
) -> None:
    """Captured changes committed all the time, also in the instant a capture chooses its stopping point: one
    committed after that point is in the schema the capture reads at its end but not in its stream. Taken for
    an uncaptured change, it would end the chain at its last verified point (an hour of moments lost)."""
    c = make_chain(pg_cluster, source, tmp_path)
    stop = threading.Event()

    def migrate() -> None:
        with psycopg.connect(pg_cluster.dsn(source), autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute(f"COMMENT ON TABLE guests IS 'revision {n}'")
                conn.execute("INSERT INTO guests (name) VALUES (%s)", (f"g{n}",))
                time.sleep(0.01)  # a migration of many statements: a change every few milliseconds

    worker = threading.Thread(target=migrate)
    worker.start()
    try:
        ends = [c.backup().extra["chain_end"] for _ in range(6)]
        stop.set()
        worker.join()
        m = c.backup()
        assert ends == [None] * 6 and m.extra["chain_end"] is None, ends
        assert_same(c.cluster, c.restore_to(None), c.db)
    finally:
        stop.set()
        worker.join()
        c.close()
