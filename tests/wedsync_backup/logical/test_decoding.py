"""Reading test_decoding's output: hand-written lines for every shape it prints, and a round trip of random
text through a real slot."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wedsync_backup.errors import IntegrityError
from wedsync_backup.logical.decoding import (
    UNCHANGED_TOAST,
    Begin,
    Change,
    Commit,
    change_shape,
    parse_line,
    same_shape_pattern,
)
from wedsync_backup.logical.objects import read_schema_objects
from wedsync_backup.logical.slot import DECODING_OPTIONS, PLUGIN, STABLE_OUTPUT

from devstack.postgres import Cluster

# --- hand-written lines ------------------------------------------------------------------------------


def test_begin_and_commit_with_its_timestamp() -> None:
    assert parse_line("BEGIN 1289") == Begin("1289")
    c = parse_line("COMMIT 1289 (at 2026-11-21 01:04:53.798646+00)")
    assert isinstance(c, Commit)
    assert c.xid == "1289"
    assert c.at == datetime(2026, 11, 21, 1, 4, 53, 798646, tzinfo=UTC)
    whole_second = parse_line("COMMIT 7 (at 2026-01-02 03:04:05+00)")
    assert isinstance(whole_second, Commit) and whole_second.at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_plain_insert() -> None:
    c = parse_line("table public.t: INSERT: id[integer]:1 v[text]:'a' n[numeric]:-1.50 ok[boolean]:true")
    assert c == Change("INSERT", [("public", "t")], new={"id": "1", "v": "a", "n": "-1.50", "ok": "true"})
    assert c.table == ("public", "t")


def test_quoted_identifiers_with_spaces_quotes_and_dots() -> None:
    line = (
        'table "Wedding Data"."Guest ""VIP"". List": INSERT: "Seat #"[integer]:3 "a.b"[text]:\'x\' "q""c"[text]:\'y\''
    )
    c = parse_line(line)
    assert isinstance(c, Change)
    assert c.tables == [("Wedding Data", 'Guest "VIP". List')]
    assert c.new == {"Seat #": "3", "a.b": "x", 'q"c': "y"}


def test_quoted_values_with_doubled_quotes_newlines_and_backslashes() -> None:
    line = (
        "table public.t: INSERT: a[text]:'it''s' b[text]:'line1\nline2' "
        "c[text]:'back\\slash \"dq\"' d[text]:'' e[text]:''''"
    )
    c = parse_line(line)
    assert isinstance(c, Change)
    assert c.new == {"a": "it's", "b": "line1\nline2", "c": 'back\\slash "dq"', "d": "", "e": "'"}


def test_null_is_none_but_the_text_null_is_text() -> None:
    c = parse_line("table public.t: INSERT: a[text]:null b[text]:'null' c[integer]:null")
    assert isinstance(c, Change)
    assert c.new == {"a": None, "b": "null", "c": None}


def test_unchanged_toast_datum() -> None:
    c = parse_line("table public.t: UPDATE: id[integer]:1 small[text]:'s' big[text]:unchanged-toast-datum")
    assert isinstance(c, Change)
    assert c.new["big"] is UNCHANGED_TOAST
    assert c.new["small"] == "s" and c.old == {}


def test_bit_strings_arrays_and_jsonb() -> None:
    line = (
        "table public.t: INSERT: b[bit]:B'0101' vb[bit varying]:B'' arr[text[]]:'{\"a b\",\"c\\\"d\",NULL}' "
        "ia[integer[]]:'{1,2,3}' j[jsonb]:'{\"k\": \"v''s\", \"n\": [1, null]}' "
        "ts[timestamp with time zone]:'2024-01-01 08:00:00+00' f[double precision]:NaN"
    )
    c = parse_line(line)
    assert isinstance(c, Change)
    assert c.new == {
        "b": "0101",
        "vb": "",
        "arr": '{"a b","c\\"d",NULL}',
        "ia": "{1,2,3}",
        "j": '{"k": "v\'s", "n": [1, null]}',
        "ts": "2024-01-01 08:00:00+00",
        "f": "NaN",
    }


def test_multi_table_truncate_with_flags() -> None:
    c = parse_line('table public.a, "S s"."b.c", public.d: TRUNCATE: restart_seqs cascade')
    tables = [("public", "a"), ("S s", "b.c"), ("public", "d")]
    assert c == Change("TRUNCATE", tables, flags=["restart_seqs", "cascade"])
    c = parse_line("table public.a: TRUNCATE: (no-flags)")
    assert c == Change("TRUNCATE", [("public", "a")], flags=[])


def test_update_with_old_key() -> None:
    line = "table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:3 v[text]:'new-tuple: x'"
    c = parse_line(line)
    assert isinstance(c, Change)
    assert c.op == "UPDATE"
    assert c.old == {"id": "1"}
    assert c.new == {"id": "3", "v": "new-tuple: x"}


def test_update_with_a_full_old_row() -> None:
    line = "table public.np: UPDATE: old-key: x[integer]:1 y[text]:'a b' new-tuple: x[integer]:1 y[text]:'b'"
    c = parse_line(line)
    assert isinstance(c, Change)
    assert c.old == {"x": "1", "y": "a b"} and c.new == {"x": "1", "y": "b"}


def test_update_without_old_key() -> None:
    c = parse_line("table public.t: UPDATE: id[integer]:2 v[text]:'x'")
    assert isinstance(c, Change)
    assert c.old == {} and c.new == {"id": "2", "v": "x"}


def test_delete() -> None:
    c = parse_line("table public.t: DELETE: id[integer]:2 k[date]:'2024-01-01'")
    assert c == Change("DELETE", [("public", "t")], old={"id": "2", "k": "2024-01-01"})


@pytest.mark.parametrize(
    "line",
    [
        "garbage",
        "",
        "table public.t INSERT: id[integer]:1",
        "table public.t: INSERT: id:1",
        "table public.t: INSERT: id[integer]:'unterminated",
        "table public.t: DELETE: (no-tuple-data)",
        "table public.t: MERGE: id[integer]:1",
        "table t: INSERT: id[integer]:1",
        "COMMIT 12",
        "COMMIT 12 (at yesterday)",
    ],
)
def test_unreadable_lines_raise_integrity_error_quoting_the_line(line: str) -> None:
    with pytest.raises(IntegrityError) as e:
        parse_line(line)
    assert "could not be read" in str(e.value)
    assert repr(line[:200])[1:-1][:20] in str(e.value)


# --- a round trip through a real slot --------------------------------------------------------------

TABLE = '"rt ""odd"". table"'
PIECES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=5),
    st.sampled_from(
        ["'", "''", '"', "\\", "\n", "\r\n", "\t", " ", "😀", "👩‍❤️‍👨", "é", "null", "B'01'", "]:", " x[text]:"]
    ),
)
TEXT = st.lists(PIECES, max_size=8).map("".join)


@pytest.fixture(scope="module")
def round_trip_db(pg_cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A database with one REPLICA IDENTITY FULL table and a slot on it; the slot is always dropped."""
    db = f"dec_{uuid.uuid4().hex[:10]}"
    slot = f"wsdec_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(db)
    try:
        with psycopg.connect(pg_cluster.dsn(db), autocommit=True) as conn:
            conn.execute(f'CREATE TABLE {TABLE} (id int PRIMARY KEY, "v a.l" text, "w""x" varchar(200))')
            conn.execute(f"ALTER TABLE {TABLE} REPLICA IDENTITY FULL")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
        try:
            yield db, slot
        finally:
            with psycopg.connect(pg_cluster.dsn(db), autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,),
                )
    finally:
        pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=TEXT, b=TEXT, c=TEXT)
def test_random_text_round_trips_through_the_slot(
    pg_cluster: Cluster, round_trip_db: tuple[str, str], a: str, b: str, c: str
) -> None:
    db, slot = round_trip_db
    # synchronous_commit on: the slot only decodes WAL that is flushed
    with psycopg.connect(pg_cluster.dsn(db), autocommit=True, options="-c synchronous_commit=on") as conn:
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, %s, %s)", (a, b))
        conn.execute(f'UPDATE {TABLE} SET "v a.l" = %s', (c,))
        conn.execute(f"DELETE FROM {TABLE}")
        conn.execute(STABLE_OUTPUT)
        opts = ", ".join(f"'{o}'" for o in DECODING_OPTIONS)
        rows = conn.execute(f"SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL, {opts})", (slot,)).fetchall()
    events = [parse_line(r[0]) for r in rows]
    inserted = next(r[0] for r in rows if ": INSERT: " in r[0])
    pattern = same_shape_pattern(inserted)
    assert pattern is not None and pattern.fullmatch(inserted)  # whatever the values hold
    changes = [e for e in events if isinstance(e, Change)]
    assert [type(e) for e in events] == [Begin, Change, Commit] * 3
    assert all(ch.table == ("public", 'rt "odd". table') for ch in changes)
    first = {"id": "1", "v a.l": a, 'w"x': b}
    then = {"id": "1", "v a.l": c, 'w"x': b}
    assert [(ch.op, ch.old, ch.new) for ch in changes] == [
        ("INSERT", {}, first),
        ("UPDATE", first, then),
        ("DELETE", then, {}),
    ]


def test_change_shape_lists_the_columns_the_decoder_printed() -> None:
    line = "table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:3 \"a b\"[integer[]]:'{1}'"
    assert change_shape(line) == ([("public", "t")], "update", ["id[integer]", "a b[integer[]]"])
    assert change_shape("table public.t: DELETE: id[integer]:2")[2] == ["id[integer]"]
    assert change_shape("table public.a, public.b: TRUNCATE: cascade")[1:] == ("truncate", [])


def test_a_shape_pattern_matches_rows_of_that_shape_only() -> None:
    head = 'table public."Z z": INSERT: id[integer]:'
    p = same_shape_pattern(head + """1 "a b"[text]:'x''y z' n[numeric]:null b[bit(3)]:B'101'""")
    assert p is not None
    same = [
        """-5 "a b"[text]:'' n[numeric]:NaN b[bit(3)]:B'000'""",
        """1 "a b"[text]:'it''s n[numeric]:1' n[numeric]:2 b[bit(3)]:unchanged-toast-datum""",
        """1 "a b"[text]:'''' n[numeric]:2 b[bit(3)]:null""",
    ]
    other = [
        """1 "a b"[text]:'x' extra[text]:'y' n[numeric]:null b[bit(3)]:null""",
        """1 "a b"[text]:'x n[numeric]:1 b[bit(3)]:null'""",
        """1 "a b"[text]:'x' n[numeric]:null""",
        """1 "a b"[text]:'x' n[numeric]:null b[bit(3)]:null c[int]:1""",
    ]
    assert all(p.fullmatch(head + rest) for rest in same)
    assert not any(p.fullmatch(head + rest) for rest in other)
    assert not p.fullmatch(head.replace("INSERT", "UPDATE") + same[0])
    assert same_shape_pattern("table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2") is None


def test_the_recorded_shape_of_a_table_is_what_the_decoder_prints(pg_cluster: Cluster) -> None:
    """The guard compares them (an uncaptured change shows as rows of another shape): they must agree."""
    db, slot = f"shape_{uuid.uuid4().hex[:10]}", f"wsshape_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(db)
    try:
        with psycopg.connect(pg_cluster.dsn(db), autocommit=True, options="-c synchronous_commit=on") as conn:
            conn.execute(
                "CREATE TYPE mood AS ENUM ('ok'); CREATE SCHEMA other;"
                " CREATE DOMAIN other.pos AS int CHECK (VALUE > 0);"
                'CREATE TABLE "odd T" (id int PRIMARY KEY, "a ""b"" c" varchar(10), n numeric(5,2), tags text[],'
                " m mood, p other.pos, at timestamptz, g int GENERATED ALWAYS AS (id * 2) STORED);"
                'ALTER TABLE "odd T" DROP COLUMN tags'
            )
            conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
            conn.execute("""INSERT INTO "odd T" (id, "a ""b"" c", m, p) VALUES (1, 'x', 'ok', 3)""")
            conn.execute(STABLE_OUTPUT)
            opts = ", ".join(f"'{o}'" for o in DECODING_OPTIONS)
            [line] = [
                r[0]
                for r in conn.execute(
                    f"SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL, {opts})", (slot,)
                ).fetchall()
                if r[0].startswith("table ")
            ]
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            objects = read_schema_objects(conn)
        [(key, name)] = objects.tables.items()
        assert name == ("public", "odd T")
        assert tuple(change_shape(line)[2]) == objects.shapes[key]
        assert "p[other.pos]" in objects.shapes[key] and "m[mood]" in objects.shapes[key]
    finally:
        pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
