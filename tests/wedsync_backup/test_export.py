"""Export from one consistent snapshot against a real PostgreSQL: coverage, order, parts, secrecy, retries.

The source database helpers at the top (``source_db``, ``db_state``...) are shared with the
restore, verify and replicate tests, which import them from here.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from wedsync_backup.crypto import Keyring
from wedsync_backup.export import ExportOptions, run_export
from wedsync_backup.manifest import Manifest, backup_prefix, manifest_key, pending_manifest_key
from wedsync_backup.pg import PgTarget
from wedsync_backup.policy import load_policy
from wedsync_backup.restore import restore_backup
from wedsync_backup.storage.local import LocalStorage
from wedsync_backup.verify import verify_copy

from devstack.postgres import Cluster

# A value that exists only in the source's rows: it must never reach a backup target in clear text.
MARKER = "PLAINTEXT-MARKER-Zq7vX31kWp"

SOURCE_SQL = f"""
CREATE TYPE public.event_kind AS ENUM ('ceremony', 'reception', 'rehearsal');
CREATE TABLE public.users (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text,
    tenant text NOT NULL DEFAULT 'a'
);
ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.users USING (tenant = current_setting('app.tenant', true));
CREATE TABLE public.forms (
    id bigserial PRIMARY KEY,
    user_id int NOT NULL REFERENCES public.users (id),
    kind public.event_kind NOT NULL,
    body text
);
CREATE INDEX forms_user_idx ON public.forms (user_id);
CREATE TABLE public.misc_notes (note text, n int);
CREATE SEQUENCE public.invoice_no START 1000;
SELECT nextval('public.invoice_no') FROM generate_series(1, 5);
CREATE SCHEMA "Wedding Data";
CREATE TABLE "Wedding Data"."Guest List" (
    id serial PRIMARY KEY,
    first text NOT NULL,
    last text NOT NULL,
    full_name text GENERATED ALWAYS AS (first || ' ' || last) STORED,
    party int,
    "Seat #" int
);
CREATE TABLE "Wedding Data".events (id int NOT NULL, at date NOT NULL, label text, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE "Wedding Data".events_2024 PARTITION OF "Wedding Data".events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE "Wedding Data".events_2025 PARTITION OF "Wedding Data".events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO public.users (email, name, tenant)
    SELECT 'user' || g || '@example.com', 'User ' || g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END
      FROM generate_series(1, 200) g;
INSERT INTO public.users (email, name) VALUES ('marker@example.com', '{MARKER}');
INSERT INTO public.forms (user_id, kind, body)
    SELECT 1 + g % 200, (ARRAY['ceremony', 'reception', 'rehearsal'])[1 + g % 3]::public.event_kind, 'form ' || g
      FROM generate_series(1, 300) g;
-- a 128 kB value: stored out of line in the TOAST table
INSERT INTO public.forms (user_id, kind, body)
    SELECT 1, 'ceremony', string_agg(md5(g::text), '') FROM generate_series(1, 4000) g;
INSERT INTO public.misc_notes VALUES ('dup', 1), ('dup', 1), ('dup', 1), (NULL, NULL), (E'tab\\there', 2);
INSERT INTO "Wedding Data"."Guest List" (first, last, party, "Seat #")
    SELECT 'First' || g, 'Last' || g, g % 7, g FROM generate_series(1, 2000) g;
INSERT INTO "Wedding Data".events
    SELECT g, DATE '2024-06-01' + (g * 3), 'event ' || g FROM generate_series(1, 150) g;
CREATE MATERIALIZED VIEW public.users_per_tenant AS
    SELECT tenant, count(*) AS n FROM public.users GROUP BY tenant;
ANALYZE;
"""

# Every table that holds rows; the partitioned parent itself holds none and the matview is schema.
SOURCE_TABLES = {
    "public.users",
    "public.forms",
    "public.misc_notes",
    "Wedding Data.Guest List",
    "Wedding Data.events_2024",
    "Wedding Data.events_2025",
}


# --- shared helpers ------------------------------------------------------------------------------------


def pg_target(cluster: Cluster, dbname: str, label: str = "wedsync_source") -> PgTarget:
    return PgTarget(host="127.0.0.1", port=cluster.port, user=cluster.user, dbname=dbname, label=label)


def local_store(root: Path, name: str = "primary") -> LocalStorage:
    return LocalStorage(root, name=name, medium="disk", site="a")


@pytest.fixture(scope="module")
def source_db(pg_cluster: Cluster) -> Iterator[str]:
    """The rich source database, built once per module; tests must not change it (or must undo it)."""
    name = f"src_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    pg_cluster.psql(dbname=name, input=SOURCE_SQL)
    yield name
    pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_state(cluster: Cluster, dbname: str) -> tuple[dict[str, list[str]], dict[str, tuple[int, bool]]]:
    """Sorted rows of every table and matview, and every sequence's (last_value, is_called)."""
    with psycopg.connect(cluster.dsn(dbname)) as conn:
        rels = conn.execute(
            """SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'm', 'S')
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"""
        ).fetchall()
        rows: dict[str, list[str]] = {}
        seqs: dict[str, tuple[int, bool]] = {}
        for schema, name, kind in rels:
            ident = sql.Identifier(schema, name)
            if kind == "S":
                last, called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(ident)).fetchone()
                seqs[f"{schema}.{name}"] = (last, called)
            else:
                got = conn.execute(sql.SQL("SELECT t::text FROM {} t").format(ident)).fetchall()
                rows[f"{schema}.{name}"] = sorted(r[0] for r in got)
    return rows, seqs


def flip_body_byte(data: bytes) -> bytes:
    """Flip one bit in the middle of an encrypted object's chunks (past its clear-text header)."""
    (hlen,) = struct.unpack(">I", data[4:8])
    start = 8 + hlen
    i = start + (len(data) - start) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def count_rows(cluster: Cluster, dbname: str, schema: str, table: str) -> int:
    with psycopg.connect(cluster.dsn(dbname)) as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, table))).fetchone()[0]


# --- one export shared by the read-only checks ---------------------------------------------------------


@pytest.fixture(scope="module")
def exported(
    pg_cluster: Cluster, source_db: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Manifest, LocalStorage]:
    store = local_store(tmp_path_factory.mktemp("export") / "primary")
    policy = load_policy(env={})
    opts = ExportOptions(workers=2, priority_of=policy.priority_of)
    manifest = run_export(
        pg_target(pg_cluster, source_db), store, Keyring(os.urandom(32)), backup_id="full-x", options=opts
    )
    return manifest, store


def test_every_table_is_exported_unlisted_ones_as_standard(exported: tuple[Manifest, LocalStorage]) -> None:
    m, _ = exported
    assert {t.qualified for t in m.tables} == SOURCE_TABLES
    prio = {t.qualified: t.priority for t in m.tables}
    assert prio["public.users"] == "critical"
    assert prio["public.forms"] == "high"
    assert prio["public.misc_notes"] == "standard"
    assert prio["Wedding Data.Guest List"] == "standard"
    leaves = {t.qualified: t.parent for t in m.tables if t.parent}
    assert leaves == {
        "Wedding Data.events_2024": "Wedding Data.events",
        "Wedding Data.events_2025": "Wedding Data.events",
    }


def test_order_is_critical_then_high_then_standard(exported: tuple[Manifest, LocalStorage]) -> None:
    m, _ = exported
    rank = {"critical": 0, "high": 1, "standard": 2}
    order = [rank[t.priority] for t in m.tables]
    assert order == sorted(order)
    assert [t.qualified for t in m.tables[:2]] == ["public.users", "public.forms"]
    # data objects are numbered in export order too
    keys = [t.parts[0].key for t in m.tables]
    assert keys == sorted(keys)


def test_generated_columns_are_not_exported(exported: tuple[Manifest, LocalStorage]) -> None:
    m, _ = exported
    guests = next(t for t in m.tables if t.qualified == "Wedding Data.Guest List")
    assert guests.columns == ["id", "first", "last", "party", "Seat #"]
    users = next(t for t in m.tables if t.qualified == "public.users")
    assert users.columns == ["id", "email", "name", "tenant"]  # identity column is data


def test_row_counts_match_the_source(
    exported: tuple[Manifest, LocalStorage], pg_cluster: Cluster, source_db: str
) -> None:
    m, _ = exported
    for t in m.tables:
        assert t.row_count == count_rows(pg_cluster, source_db, t.schema, t.name), t.qualified
    assert m.total_rows == 201 + 301 + 5 + 2000 + 150


def test_sequences_and_consistent_point_are_captured(exported: tuple[Manifest, LocalStorage]) -> None:
    m, _ = exported
    seqs = {f"{s.schema}.{s.name}": (s.last_value, s.is_called) for s in m.sequences}
    assert seqs["public.invoice_no"] == (1004, True)
    assert seqs["public.users_id_seq"] == (201, True)  # the identity column's sequence
    assert seqs["public.forms_id_seq"] == (301, True)
    assert seqs["Wedding Data.Guest List_id_seq"] == (2000, True)
    cp = m.consistent_point
    assert cp["snapshot"] and cp["lsn"] and "/" in cp["lsn"] and cp["txid_snapshot"]
    assert datetime.fromisoformat(cp["time"]).tzinfo is not None
    assert m.created_at == cp["time"]
    assert m.mac and m.source["database"]


def test_plaintext_never_reaches_the_target(exported: tuple[Manifest, LocalStorage]) -> None:
    m, store = exported
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert len(files) == len(m.objects()) + 1  # + the pending manifest
    for p in files:
        assert MARKER.encode() not in p.read_bytes(), f"plaintext marker found in {p}"
        assert b"marker@example.com" not in p.read_bytes(), f"plaintext found in {p}"
    assert store.exists(pending_manifest_key(m.backup_id))
    assert not store.exists(manifest_key(m.backup_id)), "export must not commit the backup itself"


# --- options -----------------------------------------------------------------------------------------


def test_partitions_inherit_their_parents_priority(pg_cluster: Cluster, source_db: str, tmp_path: Path) -> None:
    def priority_of(schema: str, table: str) -> str:
        return {"Wedding Data.events": "critical", "public.misc_notes": "high"}.get(f"{schema}.{table}", "standard")

    m = run_export(
        pg_target(pg_cluster, source_db),
        local_store(tmp_path),
        Keyring(os.urandom(32)),
        backup_id="prio",
        options=ExportOptions(priority_of=priority_of),
    )
    assert [t.qualified for t in m.tables[:3]] == [
        "Wedding Data.events_2024",
        "Wedding Data.events_2025",
        "public.misc_notes",
    ]
    assert [t.priority for t in m.tables[:3]] == ["critical", "critical", "high"]


def test_exclude_schemas_leaves_the_schema_out_entirely(
    pg_cluster: Cluster, source_db: str, empty_db: str, tmp_path: Path
) -> None:
    store, ring = local_store(tmp_path), Keyring(os.urandom(32))
    m = run_export(
        pg_target(pg_cluster, source_db),
        store,
        ring,
        backup_id="excl",
        options=ExportOptions(exclude_schemas=("Wedding Data",)),
    )
    assert {t.schema for t in m.tables} == {"public"}
    assert all(s.schema == "public" for s in m.sequences)
    assert m.schema["exclude_schemas"] == ["Wedding Data"]
    restore_backup(m, store, ring, pg_target(pg_cluster, empty_db, "restore_target"))
    rows, _ = db_state(pg_cluster, empty_db)
    assert not [r for r in rows if r.startswith("Wedding Data.")], "excluded schema was restored"


def test_exclude_schemas_leaves_its_data_out(pg_cluster: Cluster, source_db: str, tmp_path: Path) -> None:
    """The part of exclusion that works today: no table data or sequence of the schema is exported."""
    m = run_export(
        pg_target(pg_cluster, source_db),
        local_store(tmp_path),
        Keyring(os.urandom(32)),
        backup_id="excl-data",
        options=ExportOptions(exclude_schemas=("Wedding Data",)),
    )
    assert {t.qualified for t in m.tables} == {"public.users", "public.forms", "public.misc_notes"}
    assert {s.schema for s in m.sequences} == {"public"}


def test_small_split_pages_give_several_parts_and_identical_restore(
    pg_cluster: Cluster, source_db: str, empty_db: str, tmp_path: Path
) -> None:
    store, ring = local_store(tmp_path), Keyring(os.urandom(32))
    m = run_export(
        pg_target(pg_cluster, source_db),
        store,
        ring,
        backup_id="split",
        options=ExportOptions(workers=2, split_pages=1),
    )
    guests = next(t for t in m.tables if t.qualified == "Wedding Data.Guest List")
    assert len(guests.parts) > 5
    assert len({p.key for p in guests.parts}) == len(guests.parts)
    assert guests.row_count == 2000
    assert sum(len(t.parts) for t in m.tables) > len(m.tables)
    restore_backup(m, store, ring, pg_target(pg_cluster, empty_db, "restore_target"), workers=3)
    assert db_state(pg_cluster, empty_db) == db_state(pg_cluster, source_db)


def test_all_data_comes_from_one_snapshot(pg_cluster: Cluster, source_db: str, empty_db: str, tmp_path: Path) -> None:
    """Writes committed after the snapshot is taken (while the export runs) are not in the backup."""
    before = db_state(pg_cluster, source_db)[0]
    wrote: list[bool] = []

    def priority_of(schema: str, table: str) -> str:
        if not wrote:  # called inside the export, after its snapshot was exported
            wrote.append(True)
            with psycopg.connect(pg_cluster.dsn(source_db), autocommit=True) as conn:
                conn.execute("INSERT INTO public.misc_notes VALUES ('late', 42)")
                conn.execute("UPDATE public.users SET name = 'renamed late' WHERE id = 1")
        return "standard"

    store, ring = local_store(tmp_path), Keyring(os.urandom(32))
    source = pg_target(pg_cluster, source_db)
    try:
        m = run_export(source, store, ring, backup_id="snap", options=ExportOptions(priority_of=priority_of))
    finally:
        pg_cluster.psql(
            "-c",
            "DELETE FROM public.misc_notes WHERE n = 42; UPDATE public.users SET name = 'User 1' WHERE id = 1",
            dbname=source_db,
        )
    assert wrote
    assert next(t for t in m.tables if t.name == "misc_notes").row_count == 5
    restore_backup(m, store, ring, pg_target(pg_cluster, empty_db, "restore_target"))
    after = db_state(pg_cluster, empty_db)[0]
    assert after["public.misc_notes"] == before["public.misc_notes"]
    assert after["public.users"] == before["public.users"]


# --- retries -------------------------------------------------------------------------------------------


def test_rerun_after_a_partial_attempt_cleans_and_succeeds(pg_cluster: Cluster, source_db: str, tmp_path: Path) -> None:
    store, ring = local_store(tmp_path), Keyring(os.urandom(32))
    prefix = backup_prefix("retry")
    store.put_bytes(f"{prefix}data/00099-public.gone-000.wsb", b"left by a crashed attempt")
    store.put_bytes(f"{prefix}schema.wsb", b"half a schema")
    m = run_export(pg_target(pg_cluster, source_db), store, ring, backup_id="retry")
    keys = {o.key for o in store.list(prefix)}
    assert keys == {o.key for o in m.objects()} | {pending_manifest_key("retry")}
    assert verify_copy(m, store, ring, deep=True).verified


def test_committed_backup_is_returned_unchanged(pg_cluster: Cluster, source_db: str, tmp_path: Path) -> None:
    store, ring = local_store(tmp_path), Keyring(os.urandom(32))
    source = pg_target(pg_cluster, source_db)
    first = run_export(source, store, ring, backup_id="done")
    store.put_bytes(manifest_key("done"), first.to_bytes())  # what the commit step does
    before = {o.key: store.get_bytes(o.key) for o in store.list(backup_prefix("done"))}
    pg_cluster.psql("-c", "INSERT INTO public.misc_notes VALUES ('after the backup', 99)", dbname=source_db)
    try:
        again = run_export(source, store, ring, backup_id="done")
    finally:
        pg_cluster.psql("-c", "DELETE FROM public.misc_notes WHERE n = 99", dbname=source_db)
    assert again.to_bytes() == first.to_bytes()
    assert {o.key: store.get_bytes(o.key) for o in store.list(backup_prefix("done"))} == before
