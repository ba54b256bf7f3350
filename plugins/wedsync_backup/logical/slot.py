"""Replication slots: where an incremental chain starts, and the promise not to lose WAL it needs.

A full backup creates its chain's slot with an exported snapshot and exports its data in that very
snapshot, so the chain's first change is exactly the first one the full backup does not contain. The slot is
advanced only after an incremental is verified on every target. An abandoned slot keeps WAL on the source
until its disk fills, so its retained WAL is watched.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from wedsync_backup.errors import ConfigError
from wedsync_backup.pg import PgTarget

PLUGIN = "test_decoding"
SLOT_PREFIX = "wedsync_"
DECODING_OPTIONS = ("include-xids", "1", "include-timestamp", "1", "skip-empty-xacts", "1")
# Values must print the same at capture and at apply time (used to match rows of tables without a key).
STABLE_OUTPUT = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
    "SET extra_float_digits = 1; SET bytea_output = 'hex'"
)


def slot_name_for(backup_id: str) -> str:
    """Deterministic per full backup, so a retried export finds (and replaces) its own slot."""
    return SLOT_PREFIX + re.sub(r"[^a-z0-9_]", "_", hashlib.sha256(backup_id.encode()).hexdigest()[:16])


@dataclass(frozen=True)
class SlotInfo:
    name: str
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    retained_wal_bytes: int
    active: bool


def check_logical_decoding(source: PgTarget) -> str | None:
    """None when the source can decode; otherwise why not (wal_level, privileges)."""
    with source.connect(autocommit=True) as conn:
        level = conn.execute("SHOW wal_level").fetchone()[0]
        if level != "logical":
            return f"wal_level is '{level}', logical decoding needs 'logical'"
        ok = conn.execute("SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        if not ok:
            return "the backup user has neither SUPERUSER nor REPLICATION"
    return None


@contextmanager
def slot_with_snapshot(source: PgTarget, slot: str) -> Iterator[tuple[str, str]]:
    """Create ``slot`` and yield (snapshot name, consistent LSN); the snapshot lives until the block ends.

    A slot left by an earlier attempt of the same backup is dropped first (its chain never started).
    """
    drop_slot(source, slot)
    try:
        conn = psycopg.connect(source.conninfo(), replication="database", autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise ConfigError(
            f"Cannot open a replication connection to {source.label}",
            str(e).strip().splitlines()[0] if str(e).strip() else "refused",
            "allow replication connections for the backup user in pg_hba.conf and give it REPLICATION",
        ) from e
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE_REPLICATION_SLOT {slot} LOGICAL {PLUGIN} (SNAPSHOT 'export')")
        _, lsn, snapshot, _ = cur.fetchone()
        yield snapshot, lsn
    except BaseException:
        conn.close()
        drop_slot(source, slot)
        raise
    conn.close()


def drop_slot(source: PgTarget, slot: str) -> bool:
    with source.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return row is not None


def slot_info(source: PgTarget, slot: str) -> SlotInfo | None:
    with source.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT slot_name, restart_lsn::text, confirmed_flush_lsn::text, "
            "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint, active "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return SlotInfo(*row) if row else None


def wedsync_slots(source: PgTarget) -> list[SlotInfo]:
    with source.connect(autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s "
                "AND database = current_database() ORDER BY 1",
                (SLOT_PREFIX + "%",),
            ).fetchall()
        ]
    return [i for n in names if (i := slot_info(source, n))]


def advance_slot(source: PgTarget, slot: str, lsn: str) -> None:
    """Tell the source it may recycle WAL up to ``lsn``: only once what depends on it is safe."""
    with source.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, lsn))


def ensure_replica_identity(source: PgTarget, exclude_schemas: tuple[str, ...] = ()) -> list[str]:
    """Give every table without a primary key (or replica identity index) REPLICA IDENTITY FULL.

    Without it, logical decoding cannot say which row an UPDATE or DELETE touched. Returns the tables
    changed (recorded in the full backup's manifest and the audit log).
    """
    with source.connect(autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
               AND n.nspname <> ALL(%s)
               AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (
                     SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                               AND d.objid = c.oid AND d.deptype = 'e')
             ORDER BY 1
            """,
            (list(exclude_schemas),),
        ).fetchall()
        changed = []
        for (name,) in rows:
            conn.execute(f"ALTER TABLE {name} REPLICA IDENTITY FULL")
            changed.append(name)
    return changed
