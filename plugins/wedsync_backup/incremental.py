"""The hourly incremental: every change committed since the previous backup of the chain, and nothing else.

Changes come from the chain's logical replication slot (test_decoding), are streamed as JSON lines through
the same zstd + AES-256-GCM pipeline as a full backup, and the slot is advanced only after the incremental is
verified on every target (see ``advance_slot``). Peeking does not consume anything, so a crash anywhere
before the advance loses nothing, and a retry produces the same chain: same start, no duplicate, no gap.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.logical.decoding import Begin, Change, Commit, change_head, parse_line
from wedsync_backup.logical.slot import DECODING_OPTIONS, STABLE_OUTPUT, slot_info
from wedsync_backup.manifest import Manifest, Provenance, backup_prefix
from wedsync_backup.pg import PgTarget
from wedsync_backup.pipeline import decode_from_storage, encode_to_storage
from wedsync_backup.repository import begin_attempt, seal_pending
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
FETCH = 2000
COMMIT_STAMP_MARGIN_S = 1.0


def schema_fingerprint(source: PgTarget, exclude_schemas: tuple[str, ...] = ()) -> str:
    """A hash of the user schema (relations, columns, types, constraints, indexes): changes on any DDL."""
    with source.connect(autocommit=True) as conn:
        row = conn.execute(
            """
            SELECT md5(string_agg(x, E'\\n' ORDER BY x)) FROM (
              SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' ||
                     coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                                 || ' ' || a.attgenerated::text, ',' ORDER BY a.attnum)
                               FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                                 AND NOT a.attisdropped), '') AS x
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p', 'v', 'm', 'i', 'S', 'f')
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> ALL(%s)
              UNION ALL
              SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
                FROM pg_constraint WHERE connamespace NOT IN (SELECT oid FROM pg_namespace
                                                              WHERE nspname IN ('pg_catalog', 'information_schema'))
              UNION ALL
              SELECT 'function ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc)
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
              UNION ALL
              SELECT 'trigger ' || tgrelid::regclass::text || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal
              UNION ALL
              SELECT 'policy ' || polrelid::regclass::text || ' ' || polname FROM pg_policy
            ) s
            """,
            (list(exclude_schemas),),
        ).fetchone()
    return row[0] or ""


@dataclass
class CaptureStats:
    transactions: int = 0
    changes: int = 0
    first_commit: str | None = None
    last_commit: str | None = None
    last_commit_lsn: str | None = None
    last_xid: str | None = None
    per_table: dict[str, dict[str, int]] = field(default_factory=dict)

    def see(self, lsn: str, xid: str, data: str) -> None:
        """Count a captured line. Only its head is parsed: the values are parsed at restore time."""
        if data.startswith("COMMIT "):
            ev = parse_line(data)
            assert isinstance(ev, Commit)
            self.transactions += 1
            at = ev.at.astimezone(UTC).isoformat()
            self.first_commit = self.first_commit or at
            self.last_commit, self.last_commit_lsn, self.last_xid = at, lsn, xid
        elif data.startswith("table "):
            self.changes += 1
            tables, op = change_head(data)
            for schema, table in tables:
                counts = self.per_table.setdefault(f"{schema}.{table}", {})
                counts[op] = counts.get(op, 0) + 1


def _peek(source: PgTarget, slot: str, upto_lsn: str, stats: CaptureStats) -> Iterator[bytes]:
    """Changes of the slot up to ``upto_lsn`` as JSON lines [lsn, xid, text], streamed with a cursor."""
    with source.connect(autocommit=False) as conn:
        conn.execute(STABLE_OUTPUT)
        opts = ", ".join(f"'{o}'" for o in DECODING_OPTIONS)
        with conn.cursor(name="wedsync_peek") as cur:
            cur.itersize = FETCH
            cur.execute(
                f"SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, NULL, {opts})",
                (slot, upto_lsn),
            )
            batch: list[str] = []
            for lsn, xid, data in cur:
                stats.see(lsn, xid, data)
                batch.append(json.dumps([lsn, xid, data]))
                if len(batch) >= FETCH:
                    yield ("\n".join(batch) + "\n").encode()
                    batch.clear()
            if batch:
                yield ("\n".join(batch) + "\n").encode()
        conn.rollback()


def capture_incremental(
    source: PgTarget,
    storage: Storage,
    keyring: Keyring,
    *,
    backup_id: str,
    parent: Manifest,
    chain: list[str],
    slot: str,
    zstd_level: int = 3,
    upto_lsn: str | None = None,
    extra: dict[str, Any] | None = None,
    provenance: Provenance | None = None,
) -> Manifest:
    """Capture the slot's pending changes into a new incremental backup on ``storage`` (pending manifest).

    ``parent`` is the previous backup of the chain (the full, or the last incremental); ``chain`` lists the
    chain's backup ids from the full on, this one excluded.
    """
    done = begin_attempt(storage, backup_id)
    if done is not None:
        return done
    info = slot_info(source, slot)
    if info is None:
        raise IntegrityError(
            f"The replication slot {slot} of this chain is gone",
            "without it the changes since the last backup cannot be captured",
            "run backup_daily_full now to start a new chain",
        )
    start_lsn = info.confirmed_flush_lsn
    expected = parent.extra.get("end_lsn") or parent.consistent_point.get("lsn")
    with source.connect(autocommit=True) as conn:
        now = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        # A commit is stamped just before its WAL record is written: wait out that window, so every
        # transaction stamped at or before `now` is below the stopping point.
        time.sleep(COMMIT_STAMP_MARGIN_S)
        # Decoding only sees WAL flushed to disk; with synchronous_commit=off recent commits may not be:
        # a synchronous (empty) commit flushes everything before it.
        conn.execute("SET synchronous_commit = on")
        with conn.transaction():
            conn.execute("SELECT pg_current_xact_id()")
        current = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
        upto_lsn = upto_lsn or current
        if (
            start_lsn
            and expected
            and conn.execute("SELECT %s::pg_lsn < %s::pg_lsn", (start_lsn, expected)).fetchone()[0]
        ):
            # The slot was never advanced past the parent: the parent's capture was not committed
            log.warning("Slot %s is at %s, behind the parent's end %s", slot, start_lsn, expected)
    data_key = keyring.new_data_key(backup_id)
    stats = CaptureStats()
    sequences = read_sequence_values(source)
    key = f"{backup_prefix(backup_id)}changes.wsb"
    result = encode_to_storage(_peek(source, slot, upto_lsn, stats), storage, key, data_key, zstd_level=zstd_level)
    end_lsn = stats.last_commit_lsn or start_lsn or expected
    manifest = Manifest(
        backup_id=backup_id,
        backup_type="incremental",
        created_at=now.astimezone(UTC).isoformat(),
        source=dict(parent.source),
        consistent_point={
            "lsn": end_lsn,
            "time": stats.last_commit or parent.consistent_point.get("time"),
            "txid_snapshot": stats.last_xid,
            "slot": slot,
        },
        encryption=data_key.manifest_section(),
        compression={"algorithm": "zstd", "level": zstd_level},
        schema={},
        changes={"object": result.stored_object().__dict__, "format": "test_decoding-jsonl", "plugin": "test_decoding"},
        parent_backup_id=parent.backup_id,
        provenance=provenance,
        extra={
            **(extra or {}),
            "chain": [*chain, backup_id],
            "start_lsn": start_lsn,
            "end_lsn": end_lsn,
            "upto_lsn": upto_lsn,
            "captured_at": now.astimezone(UTC).isoformat(),
            "first_commit": stats.first_commit,
            "last_commit": stats.last_commit,
            "transactions": stats.transactions,
            "changes": stats.changes,
            "per_table": stats.per_table,
            "captures_deletes": True,
            # sequences are not in the change stream: their values now, so a restore never hands out a
            # number the source already used (even for rows deleted since)
            "sequences": sequences,
        },
    )
    seal_pending(storage, manifest, data_key)
    log.info(
        "Captured %s: %d changes in %d transactions, LSN %s -> %s, %d bytes stored",
        backup_id,
        stats.changes,
        stats.transactions,
        start_lsn,
        end_lsn,
        result.stored_bytes,
    )
    return manifest


def read_sequence_values(source: PgTarget) -> dict[str, list[object]]:
    with source.connect(autocommit=True) as conn:
        return {
            name: [int(last), bool(called)]
            for name, last, called in conn.execute(
                "SELECT format('%I.%I', schemaname, sequencename), coalesce(last_value, start_value), "
                "last_value IS NOT NULL FROM pg_sequences "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
        }


def read_changes(
    manifest: Manifest, storage: Storage, keyring: Keyring
) -> Iterator[tuple[str, str, Begin | Change | Commit]]:
    """The captured events of an incremental, in commit order, verified chunk by chunk."""
    buf = b""
    obj = manifest.changes_object
    if obj is None:
        return
    for piece in decode_from_storage(storage, obj, keyring, backup_id=manifest.backup_id):
        buf += piece
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line:
                yield _event(line)
    if buf.strip():
        yield _event(buf)


def _event(line: bytes) -> tuple[str, str, Begin | Change | Commit]:
    lsn, xid, data = json.loads(line)
    if isinstance(data, dict):  # a watermark capture's row
        return lsn, xid, Change(data["op"], [tuple(data["table"])], new=data["new"])
    return lsn, xid, parse_line(data)


def now_utc() -> datetime:
    return datetime.now(UTC)
