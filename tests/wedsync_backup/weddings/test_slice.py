"""A wedding's slice, read from a real PostgreSQL catalog: the demo platform and an awkward custom schema."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date

import psycopg
import pytest
from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import load_policy
from wedsync_backup.weddings.policy import parse_weddings_policy
from wedsync_backup.weddings.slice import WEDDING_ID, discover_slice

from devstack.postgres import Cluster

# The wedding table is not called weddings, lives in a quoted schema, has a text key with a space in its name;
# guests refer to each other (a plus-one of another wedding); a composite-key table; a path table with two
# paths (guest, table) and one without a primary key; a self-referencing path table; a partitioned table with
# a foreign key; a soft reference without a foreign key; a parent (couples) outside the slice.
CUSTOM_SCHEMA = """
CREATE SCHEMA "Wed Data";
CREATE TABLE "Wed Data"."Couples" (id int PRIMARY KEY, name text);
CREATE TABLE "Wed Data"."Weddings" ("Wedding Key" text PRIMARY KEY, "Day" date NOT NULL,
    couple_id int REFERENCES "Wed Data"."Couples");
CREATE TABLE "Wed Data"."Guests" (id int PRIMARY KEY, "Wedding" text NOT NULL REFERENCES "Wed Data"."Weddings",
    plus_one_of int REFERENCES "Wed Data"."Guests", name text);
CREATE TABLE "Wed Data".tables (wedding text REFERENCES "Wed Data"."Weddings", table_no int,
    PRIMARY KEY (wedding, table_no));
CREATE TABLE "Wed Data".seats (guest_id int PRIMARY KEY REFERENCES "Wed Data"."Guests", wedding text, table_no int,
    FOREIGN KEY (wedding, table_no) REFERENCES "Wed Data".tables);
CREATE TABLE "Wed Data".notes (guest_id int REFERENCES "Wed Data"."Guests", body text);
CREATE TABLE "Wed Data".replies (id int PRIMARY KEY, parent_id int REFERENCES "Wed Data".replies,
    guest_id int REFERENCES "Wed Data"."Guests");
CREATE TABLE "Wed Data".activity (id int, "Wedding" text REFERENCES "Wed Data"."Weddings", at date,
    PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE "Wed Data".activity_2025 PARTITION OF "Wed Data".activity FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE "Wed Data".activity_rest PARTITION OF "Wed Data".activity DEFAULT;
CREATE TABLE "Wed Data".log (wedding text, what text);
CREATE TABLE public.unrelated (id int PRIMARY KEY);

INSERT INTO "Wed Data"."Couples" VALUES (1, 'A & B'), (2, 'C & D'), (3, 'nobody''s');
INSERT INTO "Wed Data"."Weddings" VALUES ('W 1', '2026-06-01', 1), ('W 2', '2026-07-01', 2),
    ('W 3', '2026-08-01', NULL);
INSERT INTO "Wed Data"."Guests" VALUES (1, 'W 1', NULL, 'g1'), (3, 'W 2', NULL, 'g3'), (2, 'W 1', 3, 'g2'),
    (4, 'W 3', NULL, 'g4');
INSERT INTO "Wed Data".tables VALUES ('W 1', 1), ('W 2', 1), ('W 2', 2);
INSERT INTO "Wed Data".seats VALUES (2, 'W 1', 1), (3, 'W 2', 1), (1, 'W 2', 2), (4, NULL, NULL);
INSERT INTO "Wed Data".notes VALUES (1, 'same'), (1, 'same'), (3, 'other');
INSERT INTO "Wed Data".replies VALUES (10, NULL, 1), (11, 10, 1), (12, 11, NULL), (13, NULL, 3);
INSERT INTO "Wed Data".activity VALUES (1, 'W 1', '2025-03-01'), (2, 'W 1', '2027-01-01'), (3, 'W 2', '2025-05-05');
INSERT INTO "Wed Data".log VALUES ('W 1', 'x'), ('W 2', 'y'), (NULL, 'z');
"""

CUSTOM_POLICY = {
    "table": '"Wed Data"."Weddings"',
    "key": "Wedding Key",
    "date_column": "Day",
    "soft_references": ['"Wed Data".log.wedding'],
    "data_types": {"guests": ['"Wed Data"."Guests"'], "seating": ['"Wed Data".tables', '"Wed Data".seats']},
}


@pytest.fixture(scope="module")
def custom_db(pg_cluster: Cluster) -> Iterator[psycopg.Connection]:
    name = f"wslice_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    with psycopg.connect(pg_cluster.dsn(name), autocommit=True) as conn:
        conn.execute(CUSTOM_SCHEMA)
        yield conn
    pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def demo_conn(demo_source: str, pg_cluster: Cluster) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_cluster.dsn(demo_source), autocommit=True) as conn:
        yield conn


def rows(conn: psycopg.Connection, query, ids: list[str]) -> list[tuple]:
    return conn.execute(query, {"wedding_ids": ids}).fetchall()


def by_name(sl):
    return {t.name: t for t in (*sl.tables, *sl.parents)}


def test_custom_schema_membership_and_order(custom_db: psycopg.Connection) -> None:
    sl = discover_slice(custom_db, parse_weddings_policy(CUSTOM_POLICY))
    t = by_name(sl)
    assert sl.root.qualified == ("Wed Data", "Weddings") and sl.tables[0] is sl.root
    assert sl.root.key == ("Wedding Key",) and sl.root.membership == "root"
    assert {n: t[n].membership for n in ("Guests", "tables", "activity", "log", "seats", "notes", "replies")} == {
        "Guests": "direct",
        "tables": "direct",
        "activity": "direct",
        "log": "direct",
        "seats": "path",
        "notes": "path",
        "replies": "path",
    }
    assert t["Guests"].direct_columns == ("Wedding",)  # the plus-one self-reference decides nothing
    assert t["notes"].key is None and t["tables"].key == ("wedding", "table_no")
    assert t["activity"].kind == "p" and "activity_2025" not in t
    assert [p.name for p in sl.parents] == ["Couples"] and "unrelated" not in t
    names = [x.name for x in sl.tables]
    assert names.index("Guests") < names.index("seats") and names.index("tables") < names.index("seats")
    assert t["Guests"].data_type == "guests" and t["seats"].data_type == "seating" and t["notes"].data_type is None
    assert [x.name for x in sl.tables_for(["seating"])] == [n for n in names if n in ("tables", "seats")]
    with pytest.raises(ConfigError, match="'photos'"):
        sl.tables_for(["photos"])


def test_custom_schema_member_rows(custom_db: psycopg.Connection) -> None:
    sl = discover_slice(custom_db, parse_weddings_policy(CUSTOM_POLICY))
    t = by_name(sl)
    w1 = ["W 1"]
    assert rows(custom_db, t["Weddings"].member_rows_sql(), w1) == [("W 1", date(2026, 6, 1), 1)]
    assert sorted(r[0] for r in rows(custom_db, t["Guests"].member_rows_sql(), w1)) == [1, 2]  # not g3 (W 2)
    assert sorted(r[0] for r in rows(custom_db, t["seats"].member_rows_sql(), w1)) == [1, 2]  # 1 via its guest
    assert sorted(r[0] for r in rows(custom_db, t["seats"].member_rows_sql(), ["W 2"])) == [1, 3]  # 1 via table
    assert rows(custom_db, t["notes"].member_rows_sql(), w1) == [(1, "same"), (1, "same")]  # no PK: both kept
    assert sorted(r[0] for r in rows(custom_db, t["replies"].member_rows_sql(), w1)) == [10, 11]
    assert sorted(r[0] for r in rows(custom_db, t["activity"].member_rows_sql(), w1)) == [1, 2]  # both partitions
    assert rows(custom_db, t["log"].member_rows_sql(), w1) == [("W 1", "x")]
    assert rows(custom_db, t["Couples"].referenced_rows_sql(), w1) == [(1, "A & B")]
    assert rows(custom_db, t["Couples"].referenced_rows_sql(), ["W 3"]) == []
    # with the wedding id: a row shared by two weddings once per wedding, every other row once
    both = ["W 1", "W 2"]
    seats = Counter((r[0], r[1]) for r in rows(custom_db, t["seats"].member_rows_sql(True), both))
    assert seats == Counter({("W 1", 1): 1, ("W 1", 2): 1, ("W 2", 1): 1, ("W 2", 3): 1})
    assert len(rows(custom_db, t["seats"].member_rows_sql(), both)) == 3
    notes = Counter(r[0] for r in rows(custom_db, t["notes"].member_rows_sql(True), both))
    assert notes == Counter({"W 1": 2, "W 2": 1})
    couples = rows(custom_db, t["Couples"].referenced_rows_sql(True), both)
    assert sorted(couples) == [("W 1", 1, "A & B"), ("W 2", 2, "C & D")]
    assert rows(custom_db, t["Guests"].member_rows_sql(), ["no such wedding"]) == []


def test_demo_schema_slice(demo_conn: psycopg.Connection) -> None:
    sl = discover_slice(demo_conn, load_policy(env={}).weddings)
    t = by_name(sl)
    per_wedding = {
        "guests", "timeline_events", "bookings", "form_responses", "journey_instances", "payments", "files",
        "communications", "audit_logs", "event_logs",
    }  # fmt: skip
    assert {x.name for x in sl.tables} == per_wedding | {"weddings"}
    assert all(t[n].membership == "direct" for n in per_wedding)
    assert t["event_logs"].direct_columns == ("wedding_id",) and t["event_logs"].kind == "p"
    assert {p.name for p in sl.parents} == {"organizations", "suppliers", "clients", "vendors", "forms", "users"}
    parents = [p.name for p in sl.parents]
    assert parents.index("organizations") < parents.index("users") < parents.index("suppliers")
    assert t["payments"].data_type == "payments" and t["audit_logs"].data_type is None
    two = [str(r[0]) for r in demo_conn.execute("SELECT id FROM weddings ORDER BY id LIMIT 2").fetchall()]
    ids = two[:1]
    for name in ("guests", "communications", "audit_logs"):
        table = t[name]
        expected = demo_conn.execute(
            f"SELECT count(*) FROM {table.display} WHERE wedding_id = %s", (int(ids[0]),)
        ).fetchone()[0]
        assert len(rows(demo_conn, table.member_rows_sql(), ids)) == expected
        got = Counter(r[0] for r in rows(demo_conn, table.member_rows_sql(True), two))
        assert set(got) <= set(two) and sum(got.values()) == len(rows(demo_conn, table.member_rows_sql(), two))
    supplier = demo_conn.execute("SELECT supplier_id FROM weddings WHERE id = %s", (int(ids[0]),)).fetchone()[0]
    assert supplier in {r[0] for r in rows(demo_conn, t["suppliers"].referenced_rows_sql(), ids)}
    orgs = rows(demo_conn, t["organizations"].referenced_rows_sql(True), ids)
    assert len(orgs) == len({r[1] for r in orgs}) >= 1  # once per wedding


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"table": "public.nope"}, "weddings.table"),
        ({"key": "nope"}, "weddings.key"),
        ({"date_column": "nope"}, "weddings.date_column"),
        ({"soft_references": ['"Wed Data".log.nope']}, "weddings.soft_references"),
        ({"data_types": {"guests": ["unrelated"]}}, "weddings.data_types.guests"),
    ],
)
def test_bad_policy_names_the_key(custom_db: psycopg.Connection, change: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[")):
        discover_slice(custom_db, parse_weddings_policy({**CUSTOM_POLICY, **change}))


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"proximity_days": -1}, "weddings.proximity_days"),
        ({"batch_size": "ten"}, "weddings.batch_size"),
        ({"time_zone": "Mars/Olympus"}, "weddings.time_zone"),
        ({"frequency_minutes": 1}, "weddings.frequency_minutes"),
        ({"retention_days": {"forever": 1}}, "weddings.retention_days.forever"),
        ({"table": "a.b.c"}, "weddings.table"),
        ({"soft_references": ["x"]}, "weddings.soft_references"),
        ({"tabel": "x"}, "'weddings' has unknown keys"),
    ],
)
def test_bad_section_names_the_key(raw: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[")):
        parse_weddings_policy(raw)


def test_quoted_names_parse() -> None:
    wp = parse_weddings_policy(CUSTOM_POLICY)
    assert wp.table == ("Wed Data", "Weddings") and wp.key == "Wedding Key"
    assert wp.soft_references[0].schema == "Wed Data" and wp.soft_references[0].column == "wedding"
    assert parse_weddings_policy({"table": "Weddings"}).table == ("public", "weddings")  # bare names fold
    assert WEDDING_ID == "__wedding_id"
