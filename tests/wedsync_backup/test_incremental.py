"""The hourly incremental: capture from the chain's slot, crash and retry safety, schema fingerprints, and the
retention rule that keeps a full an incremental needs.

The chain helpers at the top (``Chain``, ``write``, ``new_db``...) are shared with the PITR tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError, StorageError
from wedsync_backup.export import ExportOptions, run_export
from wedsync_backup.incremental import capture_incremental, read_changes, schema_fingerprint
from wedsync_backup.logical.ddl import install_ddl_capture
from wedsync_backup.logical.decoding import Change
from wedsync_backup.logical.slot import advance_slot, drop_slot, slot_info, slot_name_for
from wedsync_backup.manifest import Manifest, StoredObject, backup_prefix, manifest_key, pending_manifest_key
from wedsync_backup.pg import PgTarget
from wedsync_backup.pitr import apply_chain, bump_sequences, plan_chain, restore_to_point
from wedsync_backup.repository import committed_manifests
from wedsync_backup.restore import restore_backup
from wedsync_backup.retention import select_prunable
from wedsync_backup.storage.base import ObjectWriter, Storage
from wedsync_backup.storage.local import PARTIAL_MARK, LocalStorage

from devstack.postgres import Cluster
from tests.wedsync_backup.test_export import db_state, local_store, pg_target

# --- shared helpers ------------------------------------------------------------------------------------


def write(cluster: Cluster, db: str, stmt: str, params: Any = None) -> None:
    """Commit ``stmt`` with synchronous_commit on, so the slot can decode it as soon as it returns.

    The test cluster runs with synchronous_commit=off; see test_capture_includes_asynchronous_commits.
    """
    with psycopg.connect(cluster.dsn(db), autocommit=True, options="-c synchronous_commit=on") as conn:
        conn.execute(stmt, params)


def drop_db(cluster: Cluster, db: str) -> None:
    """Drop ``db`` and, first, any slot on it (a database with a slot cannot be dropped)."""
    cluster.psql("-c", f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}'")
    cluster.psql("-c", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@dataclass
class Chain:
    """A source database, a full backup that started its slot, and the incrementals committed since."""

    cluster: Cluster
    db: str
    store: Storage
    ring: Keyring
    full_id: str = "full-1"
    full: Manifest | None = None
    increments: list[Manifest] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    ddl_capture: bool = True  # install the source-side DDL capture before the full (as the full's preflight does)

    @property
    def source(self) -> PgTarget:
        return pg_target(self.cluster, self.db)

    @property
    def slot(self) -> str:
        return slot_name_for(f"{self.db}/{self.full_id}")

    def start(self) -> Manifest:
        if self.ddl_capture:
            assert install_ddl_capture(self.source).installed
        self.full = run_export(self.source, self.store, self.ring, backup_id=self.full_id, options=self.options())
        self.store.put_bytes(manifest_key(self.full_id), self.full.to_bytes())
        return self.full

    def options(self) -> ExportOptions:
        return ExportOptions(slot=self.slot, workers=1)

    @property
    def parent(self) -> Manifest:
        assert self.full is not None
        return self.increments[-1] if self.increments else self.full

    def capture(self, backup_id: str | None = None, storage: Storage | None = None) -> Manifest:
        """Capture only: nothing committed, slot not advanced (what a crash right after the upload leaves)."""
        backup_id = backup_id or f"inc-{len(self.increments) + 1}"
        return capture_incremental(
            self.source,
            storage or self.store,
            self.ring,
            backup_id=backup_id,
            parent=self.parent,
            chain=[self.full_id, *(m.backup_id for m in self.increments)],
            slot=self.slot,
        )

    def commit(self, m: Manifest) -> None:
        """What the DAG does once the incremental is verified on every target: commit, then advance."""
        self.store.put_bytes(manifest_key(m.backup_id), m.to_bytes())
        advance_slot(self.source, self.slot, m.extra["end_lsn"])
        self.increments.append(m)

    def backup(self) -> Manifest:
        m = self.capture()
        self.commit(m)
        return m

    def new_target(self) -> PgTarget:
        name = f"r_{uuid.uuid4().hex[:10]}"
        self.cluster.create_database(name)
        self.restored.append(name)
        return pg_target(self.cluster, name, "restore_target")

    def restore(self, increments: list[Manifest] | None = None, until: datetime | None = None) -> str:
        """Full + ``increments`` (default: the committed chain), replayed up to ``until``; returns the db."""
        assert self.full is not None
        target = self.new_target()
        restore_backup(self.full, self.store, self.ring, target)
        incs = self.increments if increments is None else increments
        apply_chain(target, [(m, self.store) for m in incs], self.ring, until=until)
        bump_sequences(target)
        return target.dbname

    def restore_to(self, until: datetime | None) -> str:
        """The way the restore DAG does it: plan from the committed manifests, then restore_to_point."""
        target = self.new_target()
        plan = plan_chain(committed_manifests(self.store), until)
        restore_to_point(plan, self.store, self.ring, target)
        return target.dbname

    def close(self) -> None:
        drop_slot(self.source, self.slot)
        for name in self.restored:
            drop_db(self.cluster, name)


def new_db(cluster: Cluster, schema_sql: str) -> str:
    name = f"inc_{uuid.uuid4().hex[:10]}"
    cluster.create_database(name)
    cluster.psql(dbname=name, input=schema_sql)
    return name


def rows(cluster: Cluster, db: str) -> dict[str, list[str]]:
    return db_state(cluster, db)[0]


SCHEMA = """
CREATE TABLE guests (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text NOT NULL, seat int);
CREATE TABLE notes (body text, n int);
ALTER TABLE notes REPLICA IDENTITY FULL;
INSERT INTO guests (name, seat) SELECT 'guest ' || g, g FROM generate_series(1, 20) g;
INSERT INTO notes VALUES ('dup', 1), ('dup', 1), ('other', 2);
"""


@pytest.fixture
def chain(pg_cluster: Cluster, tmp_path: Path) -> Iterator[Chain]:
    """A started chain on a fresh source; its slot and every database it made are dropped afterwards."""
    db = new_db(pg_cluster, SCHEMA)
    c = Chain(pg_cluster, db, local_store(tmp_path / "primary"), Keyring(os.urandom(32)))
    try:
        c.start()
        yield c
    finally:
        c.close()
        drop_db(pg_cluster, db)


def some_writes(c: Chain, tag: str) -> None:
    write(c.cluster, c.db, "INSERT INTO guests (name, seat) VALUES (%s, 99)", (f"late {tag}",))
    write(c.cluster, c.db, "UPDATE guests SET seat = seat + 100 WHERE id = (SELECT min(id) FROM guests)")
    write(c.cluster, c.db, "DELETE FROM notes WHERE ctid = (SELECT ctid FROM notes WHERE body = 'dup' LIMIT 1)")
    write(c.cluster, c.db, "INSERT INTO notes VALUES (%s, 3)", (f"note {tag}",))


# --- capture ---------------------------------------------------------------------------------------


def test_an_incremental_holds_exactly_the_changes_since_the_full(chain: Chain) -> None:
    some_writes(chain, "a")
    m = chain.backup()
    assert m.backup_type == "incremental" and m.parent_backup_id == chain.full_id
    assert m.extra["chain"] == [chain.full_id, m.backup_id]
    assert m.extra["start_lsn"] == chain.full.consistent_point["lsn"]  # type: ignore[union-attr]
    assert m.extra["transactions"] == 4 and m.extra["changes"] == 4
    assert m.extra["per_table"] == {
        "public.guests": {"insert": 1, "update": 1},
        "public.notes": {"delete": 1, "insert": 1},
    }
    ops = [(ev.op, ev.table[1]) for _, _, ev in read_changes(m, chain.store, chain.ring) if isinstance(ev, Change)]
    assert ops == [("INSERT", "guests"), ("UPDATE", "guests"), ("DELETE", "notes"), ("INSERT", "notes")]
    assert rows(chain.cluster, chain.restore()) == rows(chain.cluster, chain.db)


def test_an_empty_capture_keeps_the_chain_where_it_was(chain: Chain) -> None:
    m = chain.backup()
    assert m.extra["changes"] == 0 and m.extra["transactions"] == 0
    assert m.extra["end_lsn"] == m.extra["start_lsn"]
    some_writes(chain, "b")
    m2 = chain.backup()
    assert m2.extra["start_lsn"] == m.extra["end_lsn"] and m2.extra["changes"] == 4
    assert rows(chain.cluster, chain.restore()) == rows(chain.cluster, chain.db)


def test_a_capture_without_its_slot_says_to_start_a_new_chain(chain: Chain) -> None:
    drop_slot(chain.source, chain.slot)
    with pytest.raises(IntegrityError, match=r"slot .* is gone.*backup_daily_full"):
        chain.capture()


# --- crash and retry -------------------------------------------------------------------------------


def test_a_crash_before_the_advance_loses_and_duplicates_nothing(chain: Chain) -> None:
    some_writes(chain, "a")
    lost = chain.capture("inc-crashed")  # uploaded, then the worker died: never committed, slot not advanced
    some_writes(chain, "b")
    retry = chain.capture("inc-retry")
    assert retry.extra["start_lsn"] == lost.extra["start_lsn"]
    assert retry.extra["changes"] == 8 and lost.extra["changes"] == 4
    chain.commit(retry)
    assert rows(chain.cluster, chain.restore()) == rows(chain.cluster, chain.db)


class FailingWriter(ObjectWriter):
    """A real local writer that raises once more than ``limit`` bytes went through it."""

    def __init__(self, inner: ObjectWriter, limit: int) -> None:
        self.inner, self.limit, self.seen = inner, limit, 0

    def write(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > self.limit:
            self.inner.write(data[: max(0, self.limit - (self.seen - len(data)))])
            raise StorageError("Cannot write the object", "the disk went away (injected)", "retry")
        self.inner.write(data)

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


class FailingStorage(LocalStorage):
    """LocalStorage whose writers for the changes object fail after ``limit`` bytes."""

    def __init__(self, root: Path, limit: int) -> None:
        super().__init__(root, name="primary", medium="disk", site="a")
        self.limit = limit

    def writer(self, key: str) -> ObjectWriter:
        inner = super().writer(key)
        return FailingWriter(inner, self.limit) if key.endswith("changes.wsb") else inner


def test_a_failed_upload_leaves_nothing_and_the_retry_succeeds(chain: Chain, tmp_path: Path) -> None:
    assert isinstance(chain.store, LocalStorage)
    before = slot_info(chain.source, chain.slot)
    write(chain.cluster, chain.db, "INSERT INTO notes SELECT md5(g::text), g FROM generate_series(1, 2000) g")
    some_writes(chain, "a")
    broken = FailingStorage(chain.store.root, limit=300)
    with pytest.raises(StorageError, match="injected"):
        chain.capture("inc-1", storage=broken)
    assert list(chain.store.list(backup_prefix("inc-1"))) == []
    assert not [p for p in chain.store.root.rglob("*") if PARTIAL_MARK in p.name]
    after = slot_info(chain.source, chain.slot)
    assert after and before and after.confirmed_flush_lsn == before.confirmed_flush_lsn
    assert after.restart_lsn == before.restart_lsn
    m = chain.capture("inc-1")
    assert m.extra["start_lsn"] == before.confirmed_flush_lsn  # type: ignore[union-attr]
    chain.commit(m)
    assert rows(chain.cluster, chain.restore()) == rows(chain.cluster, chain.db)


def test_capturing_the_same_backup_twice_gives_the_same_range(chain: Chain) -> None:
    some_writes(chain, "a")
    first = chain.capture("inc-1")
    again = chain.capture("inc-1")  # the task retried before the commit
    keys = ("start_lsn", "end_lsn", "changes", "transactions", "first_commit", "last_commit", "per_table")
    assert {k: again.extra[k] for k in keys} == {k: first.extra[k] for k in keys}
    assert [o.key for o in chain.store.list(backup_prefix("inc-1"))] == sorted(
        [again.changes_object.key, pending_manifest_key("inc-1")]  # type: ignore[union-attr]
    )
    chain.commit(again)
    some_writes(chain, "b")
    committed = chain.capture("inc-1")  # retried after the commit: returned as it was
    assert committed.to_bytes() == again.to_bytes()


def test_capture_includes_asynchronous_commits(chain: Chain) -> None:
    for i in range(1, 4):
        with psycopg.connect(chain.cluster.dsn(chain.db), autocommit=True) as conn:  # the cluster's default: off
            conn.execute("INSERT INTO guests (name) VALUES (%s)", (f"async {i}",))
        m = chain.capture(f"inc-async-{i}")  # not advanced: each capture holds everything so far
        assert m.extra["changes"] == i, f"round {i}: the capture missed a committed transaction"


def test_logical_messages_on_the_source_do_not_break_the_chain(chain: Chain) -> None:
    write(chain.cluster, chain.db, "SELECT pg_logical_emit_message(true, 'app', 'outbox'), 1")
    write(
        chain.cluster,
        chain.db,
        "BEGIN; INSERT INTO guests (name) VALUES ('with message');"
        "SELECT pg_logical_emit_message(true, 'app', 'x'); COMMIT",
    )
    write(chain.cluster, chain.db, "SELECT pg_logical_emit_message(false, 'heartbeat', 'x')")
    chain.backup()
    assert rows(chain.cluster, chain.restore()) == rows(chain.cluster, chain.db)


# --- schema fingerprint -----------------------------------------------------------------------------


def test_schema_fingerprint_changes_on_ddl_not_on_data(pg_cluster: Cluster) -> None:
    db = new_db(pg_cluster, SCHEMA)
    try:
        source = pg_target(pg_cluster, db)
        first = schema_fingerprint(source)
        assert first and first == schema_fingerprint(source)
        write(pg_cluster, db, "INSERT INTO guests (name) VALUES ('x'); DELETE FROM notes")
        assert schema_fingerprint(source) == first
        write(pg_cluster, db, "ALTER TABLE guests ADD COLUMN email text")
        added = schema_fingerprint(source)
        assert added != first
        write(pg_cluster, db, "CREATE INDEX guests_seat_idx ON guests (seat)")
        indexed = schema_fingerprint(source)
        assert indexed not in (first, added)
        write(pg_cluster, db, "INSERT INTO guests (name, email) VALUES ('y', 'y@example.com')")
        assert schema_fingerprint(source) == indexed
        write(pg_cluster, db, "CREATE SCHEMA scratch; CREATE TABLE scratch.t (x int)")
        assert schema_fingerprint(source) != indexed
        assert schema_fingerprint(source, exclude_schemas=("scratch",)) == indexed
    finally:
        drop_db(pg_cluster, db)


# Each changes what a restore brings back, and none writes a row: an uncaptured one must change the fingerprint.
SCHEMA_ONLY_CHANGES = [
    "ALTER TABLE guests ALTER COLUMN seat SET DEFAULT 7",
    "ALTER TABLE guests ALTER COLUMN seat SET NOT NULL",
    "GRANT SELECT ON guests TO PUBLIC",
    "GRANT UPDATE (seat) ON guests TO PUBLIC",
    "COMMENT ON TABLE guests IS 'the guest list'",
    "COMMENT ON COLUMN guests.seat IS 'table number'",
    "CREATE OR REPLACE VIEW seated AS SELECT name, seat FROM guests WHERE seat > 1",
    "ALTER TYPE mood ADD VALUE 'sad'",
    "CREATE SCHEMA extra",
    "ALTER TABLE guests ALTER COLUMN seat SET STATISTICS 500",
    "ALTER FUNCTION seat_of(int) SECURITY DEFINER",
    "ALTER TABLE guests DISABLE TRIGGER guests_touch",
    "ALTER SEQUENCE guests_id_seq INCREMENT BY 5",
    "ALTER TABLE guests ENABLE ROW LEVEL SECURITY",
]


def test_the_fingerprint_sees_every_schema_only_change_and_no_data_change(pg_cluster: Cluster) -> None:
    """Version 3 covers defaults, NOT NULL, grants, comments, view bodies, enum labels, schemas, function and
    trigger definitions, sequence parameters (version 2 saw none of these); rows, ANALYZE, VACUUM and TRUNCATE
    change nothing it covers."""
    db = new_db(
        pg_cluster,
        SCHEMA
        + """
        CREATE VIEW seated AS SELECT name, seat FROM guests WHERE seat > 0;
        CREATE TYPE mood AS ENUM ('happy');
        CREATE FUNCTION seat_of(g int) RETURNS int LANGUAGE sql AS 'SELECT seat FROM guests WHERE id = g';
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
        CREATE TRIGGER guests_touch BEFORE UPDATE ON guests FOR EACH ROW EXECUTE FUNCTION touch();
        """,
    )
    try:
        source = pg_target(pg_cluster, db)
        seen = {schema_fingerprint(source)}
        v2 = schema_fingerprint(source, version=2)
        assert next(iter(seen)).startswith("v3:") and v2.startswith("v2:")
        write(pg_cluster, db, "INSERT INTO guests (name, seat) VALUES ('x', 3); ANALYZE guests; TRUNCATE notes")
        with psycopg.connect(pg_cluster.dsn(db), autocommit=True) as conn:
            conn.execute("VACUUM guests")
        assert schema_fingerprint(source) in seen
        for ddl in SCHEMA_ONLY_CHANGES:
            write(pg_cluster, db, ddl)
            now = schema_fingerprint(source)
            assert now not in seen, ddl
            seen.add(now)
        assert schema_fingerprint(source, version=2) == v2  # version 2 saw none of them
    finally:
        drop_db(pg_cluster, db)


# --- retention ------------------------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def fake(backup_id: str, days_ago: float, backup_type: str = "full", parent: str | None = None) -> Manifest:
    at = (NOW - timedelta(days=days_ago)).isoformat()
    schema = StoredObject(f"{backup_prefix(backup_id)}schema.wsb", 10, "b" * 64, 20, "a" * 64)
    return Manifest(
        backup_id=backup_id,
        backup_type=backup_type,
        created_at=at,
        source={},
        consistent_point={"lsn": "0/1", "time": at},
        encryption={},
        compression={},
        schema={"object": schema.__dict__} if backup_type == "full" else {},
        parent_backup_id=parent,
    )


def test_retention_keeps_a_full_that_a_kept_incremental_depends_on() -> None:
    ms = [
        fake("f-50", 50),
        fake("f-40", 40),
        fake("i-40a", 39.9, "incremental", "f-40"),
        fake("i-40b", 39.8, "incremental", "i-40a"),
        fake("f-35", 35),
        fake("i-35", 1, "incremental", "f-35"),  # still within the window: its whole chain must stay
        fake("f-1", 1),
    ]
    assert select_prunable(ms, now=NOW, retention_days=30, backup_type="incremental") == ["i-40a", "i-40b"]
    # while f-40's incrementals exist they keep it; once pruned, it may go
    assert select_prunable(ms, now=NOW, retention_days=30) == ["f-50"]
    remaining = [m for m in ms if m.backup_id not in ("i-40a", "i-40b")]
    assert select_prunable(remaining, now=NOW, retention_days=30) == ["f-50", "f-40"]


def test_retention_keeps_old_incrementals_a_kept_incremental_needs() -> None:
    ms = [
        fake("f-40", 40),
        fake("i-1", 39, "incremental", "f-40"),
        fake("i-2", 38, "incremental", "i-1"),
        fake("i-3", 2, "incremental", "i-2"),
        fake("f-1", 1),
    ]
    assert select_prunable(ms, now=NOW, retention_days=30, backup_type="incremental") == []
    assert select_prunable(ms, now=NOW, retention_days=30) == []
