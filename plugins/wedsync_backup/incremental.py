"""The hourly incremental: every change committed since the previous backup of the chain, and nothing else.

Changes come from the chain's logical replication slot (test_decoding), are streamed as JSON lines through
the same zstd + AES-256-GCM pipeline as a full backup, and the slot is advanced only after the incremental is
verified on every target (see ``advance_slot``). Peeking does not consume anything, so a crash anywhere
before the advance loses nothing, and a retry produces the same chain: same start, no duplicate, no gap.

Schema changes travel in the same stream (``logical/ddl.py`` captures them on the source); a ``ChangeGuard``
(``logical/guard.py``) turns each into a statement to replay, or ends the chain just before a change that cannot
be replayed exactly, and the manifest's ``chain_end`` says where and why.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg

from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.logical.ddl import (
    CAPTURE_SCHEMA,
    FINGERPRINT_VERSION,
    Ddl,
    emit_marker,
    fingerprint_query,
    fingerprint_version,
)
from wedsync_backup.logical.decoding import Begin, Change, Commit, Message, parse_line
from wedsync_backup.logical.guard import CaptureStats, ChangeGuard
from wedsync_backup.logical.objects import SchemaObjects, object_xids, read_schema_objects
from wedsync_backup.logical.slot import STABLE_OUTPUT, slot_info
from wedsync_backup.logical.wal_catalog import HOW_TO_ENABLE, catalog_writers
from wedsync_backup.manifest import Manifest, Provenance, StoredObject, backup_prefix
from wedsync_backup.pg import PgTarget, pg_error_is_transient
from wedsync_backup.pipeline import decode_from_storage, encode_to_storage
from wedsync_backup.policy import DEFAULT_ZSTD_LEVEL
from wedsync_backup.repository import begin_attempt, seal_pending
from wedsync_backup.schema_changes import chain_end_warning
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
FETCH = 2000
# Empty transactions too: a transaction that only changed the schema decodes as BEGIN/COMMIT and nothing else.
PEEK_OPTIONS = ("include-xids", "1", "include-timestamp", "1", "skip-empty-xacts", "0")
__all__ = ["CaptureStats", "capture_incremental", "read_changes", "schema_fingerprint"]
COMMIT_STAMP_MARGIN_S = 1.0
COMMIT_FINISH_WAIT_S = 0.2  # a commit record written, the transaction visible: milliseconds
STOPPING_POINT_ATTEMPTS = 20  # each a few milliseconds: a migration of many statements passes in between


def schema_fingerprint(
    source: PgTarget, exclude_schemas: tuple[str, ...] = (), version: int = FINGERPRINT_VERSION
) -> str:
    """A hash of the user schema (``logical/ddl.py``: relations, columns, constraints, functions, grants...):
    changes on any DDL. The same query the source-side DDL capture runs before and after each command.
    """
    return schema_state(source, exclude_schemas, version)[0]


def schema_state(
    source: PgTarget, exclude_schemas: tuple[str, ...] = (), version: int = FINGERPRINT_VERSION
) -> tuple[str, SchemaObjects]:
    """The schema fingerprint (of ``version``: a chain compares like with like) and the objects it covers
    (``logical/objects.py``), read in one snapshot."""
    with source.connect(autocommit=True) as conn:
        return _schema_state_on(conn, exclude_schemas, version)


def _schema_state_on(
    conn: psycopg.Connection, exclude_schemas: tuple[str, ...], version: int
) -> tuple[str, SchemaObjects]:
    """``schema_state`` on an open autocommit connection, in a transaction of its own (rolled back)."""
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        fingerprint = _fingerprint_in(conn, exclude_schemas, version)
        return fingerprint, read_schema_objects(conn, exclude_schemas)


def _fingerprint_in(conn: psycopg.Connection, exclude_schemas: tuple[str, ...], version: int) -> str:
    """The fingerprint in the open transaction (it must run with search_path = pg_catalog; put back after, as
    the objects' types print as the decoder prints them: under the role's search_path)."""
    conn.execute("SET LOCAL search_path = pg_catalog")
    row = conn.execute(fingerprint_query(exclude_schemas, version).encode()).fetchone()
    conn.execute("RESET search_path")
    return row[0] or ""


def schema_at_end(parent: Manifest) -> str | None:
    """The schema fingerprint a chain's next capture starts from: the full's (typed chain section), or the one
    the previous incremental accounted for."""
    if parent.backup_type == "incremental":
        return parent.extra.get("schema_fingerprint")
    chain = parent.chain_info
    return chain.schema_fingerprint if chain else None


def objects_at_end(parent: Manifest) -> SchemaObjects | None:
    """The schema's objects where a chain's next capture starts (None: not recorded, a chain started earlier)."""
    if parent.backup_type == "incremental":
        return SchemaObjects.from_json(parent.extra.get("schema_objects"))
    chain = parent.chain_info
    return SchemaObjects.from_json(chain.schema_objects) if chain else None


# Transactions whose catalog rows of user objects are still there: candidates for an uncaptured schema change.
CATALOG_XIDS = """
SELECT DISTINCT s.x::text FROM (
  SELECT c.xmin AS x, c.relnamespace AS ns FROM pg_class c WHERE c.relpersistence <> 't'
  UNION ALL SELECT a.xmin, c.relnamespace FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             WHERE a.attnum > 0 AND c.relpersistence <> 't'
  UNION ALL SELECT xmin, connamespace FROM pg_constraint
  UNION ALL SELECT i.xmin, c.relnamespace FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
  UNION ALL SELECT d.xmin, c.relnamespace FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid
  UNION ALL SELECT t.xmin, c.relnamespace FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  UNION ALL SELECT p.xmin, c.relnamespace FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
  UNION ALL SELECT xmin, pronamespace FROM pg_proc
  UNION ALL SELECT xmin, typnamespace FROM pg_type
  UNION ALL SELECT xmin, oid FROM pg_namespace
  -- dependency rows are written when an object is created and are not updated by later changes to it
  UNION ALL SELECT d.xmin, c.relnamespace FROM pg_depend d JOIN pg_class c ON c.oid = d.refobjid
             WHERE d.refclassid = 'pg_class'::regclass AND c.relpersistence <> 't'
  UNION ALL SELECT xmin, refobjid FROM pg_depend WHERE refclassid = 'pg_namespace'::regclass
) s JOIN pg_namespace n ON n.oid = s.ns
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg\\_%%'
  AND n.nspname <> ALL(%s)
"""


def catalog_xids(source: PgTarget, exclude_schemas: tuple[str, ...] = ()) -> tuple[set[str], set[str]]:
    """(transactions that wrote catalog rows of user objects, transactions that only gathered statistics).

    ANALYZE (autovacuum's too) writes no user rows, like a schema-only transaction; its statistics rows say
    it was one, so it is not taken for a schema change.
    """
    with source.connect(autocommit=True) as conn:
        rows = conn.execute(CATALOG_XIDS, ([*exclude_schemas, CAPTURE_SCHEMA],)).fetchall()
        analyzed = conn.execute("SELECT DISTINCT xmin::text FROM pg_statistic").fetchall()
    return {r[0] for r in rows}, {r[0] for r in analyzed}


def _stopping_point(
    conn: psycopg.Connection, exclude_schemas: tuple[str, ...], version: int
) -> tuple[str, str, SchemaObjects]:
    """(LSN, fingerprint, objects): where the capture stops, and the schema there: that of exactly the
    transactions committed below the LSN, those the stream holds.

    Read once, the schema can miss a change that is in the stream (its commit record is written, and it becomes
    visible a moment later) or hold one that is not (committed after the LSN was read); either would be taken
    for an uncaptured change, and the chain would end at its last verified point. So the fingerprint is read
    before the LSN (what is visible then is below it: the marker's synchronous commit flushes it) and after it,
    once every transaction still in progress at the LSN has finished or a short wait has passed (those below
    it are finishing their commit). Equal, no change happened in between and the reads enclose the stream's
    transactions; different, the point is chosen again.
    """
    for attempt in range(1, STOPPING_POINT_ATTEMPTS + 1):
        with conn.transaction(force_rollback=True):
            before = _fingerprint_in(conn, exclude_schemas, version)
        with conn.transaction():
            emit_marker(conn, "capture flush")  # a transaction of ours, not a schema change
        lsn = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
        running = _in_progress(conn)
        deadline = time.monotonic() + COMMIT_FINISH_WAIT_S
        while running and time.monotonic() < deadline:
            time.sleep(0.002)
            running = _in_progress(conn, among=running)
        fingerprint, objects = _schema_state_on(conn, exclude_schemas, version)
        if fingerprint == before:
            break
        log.info("The schema changed while the capture chose where to stop (attempt %d): choosing again", attempt)
    return lsn, fingerprint, objects


def _in_progress(conn: psycopg.Connection, among: list[str] | None = None) -> list[str]:
    """The transactions in progress now (of ``among``, when given)."""
    row = conn.execute(
        "SELECT array_agg(x::text) FROM pg_snapshot_xip(pg_current_snapshot()) x"
        " WHERE %(among)s::text[] IS NULL OR x::text = ANY(%(among)s)",
        {"among": among},
    ).fetchone()
    return row[0] or []


def _catalog_writers(source: PgTarget, start_lsn: str, end_lsn: str) -> set[str] | None:
    """``wal_catalog.catalog_writers``, or None when the WAL cannot be read now: the chain end is then placed
    from the stream alone (never later than the change), rather than failing the capture."""
    try:
        with source.connect(autocommit=False) as conn:
            return catalog_writers(conn, start_lsn, end_lsn)
    except psycopg.Error as e:
        if pg_error_is_transient(e):
            raise source.connect_error(e) from e  # the connection dropped: the task is retried
        log.warning("Could not read the WAL from %s to %s with pg_walinspect: %s", start_lsn, end_lsn, e)
        return None


def _peek(source: PgTarget, slot: str, upto_lsn: str, guard: ChangeGuard) -> Iterator[bytes]:
    """Changes of the slot up to ``upto_lsn`` as JSON lines [lsn, xid, text | record], streamed with a cursor.

    Empty transactions are decoded too (a schema-only transaction looks empty) but never written.
    """
    with source.connect(autocommit=False) as conn:
        conn.execute(STABLE_OUTPUT)
        opts = ", ".join(f"'{o}'" for o in PEEK_OPTIONS)
        with conn.cursor(name="wedsync_peek") as cur:
            cur.itersize = FETCH
            cur.execute(
                f"SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, NULL, {opts})",
                (slot, upto_lsn),
            )
            batch: list[str] = []
            for lsn, xid, data in cur:
                for line in guard.feed(lsn, xid, data):
                    batch.append(json.dumps(line))
                if len(batch) >= FETCH:
                    yield ("\n".join(batch) + "\n").encode()
                    batch.clear()
                if guard.done:
                    break
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
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    upto_lsn: str | None = None,
    extra: dict[str, Any] | None = None,
    provenance: Provenance | None = None,
    exclude_schemas: tuple[str, ...] = (),
    end_fingerprint: str | None = None,
) -> Manifest:
    """Capture the slot's pending changes into a new incremental backup on ``storage`` (pending manifest).

    ``parent`` is the previous backup of the chain (the full, or the last incremental); ``chain`` lists the
    chain's backup ids from the full on, this one excluded. Schema changes are followed by a ``ChangeGuard``:
    captured ones travel as statements to replay; at one that cannot be replayed exactly the chain ends, and
    the manifest's ``chain_end`` says where and why. ``end_fingerprint`` is the schema at ``upto_lsn`` when
    that is not now (closing a chain at the next full backup: that backup's fingerprint).
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
    closing = upto_lsn is not None
    started = schema_at_end(parent)
    version = fingerprint_version(started) or FINGERPRINT_VERSION
    with source.connect(autocommit=True) as conn:
        now = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        # A commit is stamped just before its WAL record is written: wait out that window, so every
        # transaction stamped at or before `now` is below the stopping point.
        time.sleep(COMMIT_STAMP_MARGIN_S)
        # Decoding only sees WAL flushed to disk; with synchronous_commit=off recent commits may not be:
        # a synchronous (empty) commit flushes everything before it.
        conn.execute("SET synchronous_commit = on")
        if (
            start_lsn
            and expected
            and conn.execute("SELECT %s::pg_lsn < %s::pg_lsn", (start_lsn, expected)).fetchone()[0]
        ):
            # The slot was never advanced past the parent: the parent's capture was not committed
            log.warning("Slot %s is at %s, behind the parent's end %s", slot, start_lsn, expected)
        if closing:  # the schema at the stopping point is the next full backup's; the objects are not known
            # (an uncaptured change then cuts at the verified point)
            assert upto_lsn is not None
            live_fingerprint, live_objects = end_fingerprint, None
            with conn.transaction():
                emit_marker(conn, "capture flush")  # a transaction of ours, not a schema change
        else:
            upto_lsn, live_fingerprint, live_objects = _stopping_point(conn, exclude_schemas, version)
    data_key = keyring.new_data_key(backup_id)
    ddl_xids, analyze_xids = catalog_xids(source, exclude_schemas)
    with source.connect(autocommit=True) as conn:
        rewrites = object_xids(conn, exclude_schemas)
    sequences = read_sequence_values(source)
    key = f"{backup_prefix(backup_id)}changes.wsb"
    writers: set[str] | None = None
    while True:
        guard = ChangeGuard(
            started,
            ddl_xids,
            {*exclude_schemas, CAPTURE_SCHEMA},
            analyze_xids,
            objects_at_end(parent),
            rewrites,
            writers,
        )
        result = encode_to_storage(_peek(source, slot, upto_lsn, guard), storage, key, data_key, zstd_level=zstd_level)
        guard.finish(live_fingerprint, live_objects)
        if writers is not None or not guard.uncaptured:
            break
        # an uncaptured change ends the chain: where the WAL can be read, place it exactly and capture again
        writers = _catalog_writers(source, info.restart_lsn or start_lsn or upto_lsn, upto_lsn)
        if writers is None:
            log.warning(
                "The chain ends at an uncaptured schema change, placed from the stream alone: %s", HOW_TO_ENABLE
            )
            break
        log.warning("An uncaptured schema change ends the chain: capturing again with its place read from the WAL")
    if guard.needs_recount:
        assert guard.cut is not None
        guard.cut.stats = recount(storage, result.stored_object(), keyring, backup_id, guard.cut.transactions)
    stats = guard.result_stats
    captured_at = now.astimezone(UTC).isoformat()
    chain_end = guard.chain_end(captured_at)
    end_lsn = stats.last_commit_lsn or start_lsn or expected
    if chain_end:
        log.error(
            "!!! The chain ends in %s: %s. Everything committed before %s is restorable; a new full backup "
            "starts the next chain",
            backup_id,
            chain_end["reason"],
            chain_end["covered_until"],
        )
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
            "captured_at": captured_at,
            "first_commit": stats.first_commit,
            "last_commit": stats.last_commit,
            "transactions": stats.transactions,
            "changes": stats.changes,
            "per_table": stats.per_table,
            "captures_deletes": True,
            "schema_fingerprint": guard.expected,  # the schema at the end, as the stream accounts for it
            "schema_changes": guard.ddl,  # replayed at their position
            # the objects at the end, where the next capture starts (see logical/objects.py)
            "schema_objects": live_objects.to_json() if live_objects and not chain_end else None,
            "chain_end": chain_end,
            **({"warnings": [chain_end_warning(chain_end)]} if chain_end else {}),
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


Event = Begin | Change | Commit | Message | Ddl


def read_changes(manifest: Manifest, storage: Storage, keyring: Keyring) -> Iterator[tuple[str, str, Event]]:
    """The captured events of an incremental, in commit order, verified chunk by chunk.

    When the chain ended inside this incremental, only the transactions before the end are read.
    """
    limit = (manifest.extra.get("chain_end") or {}).get("replay_transactions")
    begins = 0
    for lsn, xid, ev in _read_all(manifest, storage, keyring):
        if isinstance(ev, Begin):
            begins += 1
            if limit is not None and begins > limit:
                return
        yield lsn, xid, ev


def _read_all(manifest: Manifest, storage: Storage, keyring: Keyring) -> Iterator[tuple[str, str, Event]]:
    obj = manifest.changes_object
    if obj is None:
        return
    for lsn, xid, data in _stored_lines(storage, obj, keyring, manifest.backup_id):
        yield _event(lsn, xid, data)


def _stored_lines(storage: Storage, obj: StoredObject, keyring: Keyring, backup_id: str) -> Iterator[list[Any]]:
    """The [lsn, xid, text | record] lines of a stored changes object, in order."""
    buf = b""
    for piece in decode_from_storage(storage, obj, keyring, backup_id=backup_id):
        buf += piece
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line:
                yield json.loads(line)
    if buf.strip():
        yield json.loads(buf)


def recount(storage: Storage, obj: StoredObject, keyring: Keyring, backup_id: str, transactions: int) -> CaptureStats:
    """The statistics of the first ``transactions`` transactions of what a capture stored (a cut moved back)."""
    stats, begins = CaptureStats(), 0
    for lsn, xid, data in _stored_lines(storage, obj, keyring, backup_id):
        if isinstance(data, str) and data.startswith("BEGIN "):
            begins += 1
            if begins > transactions:
                break
        stats.see(lsn, xid, data)
    return stats.committed()


def _event(lsn: str, xid: str, data: str | dict[str, Any]) -> tuple[str, str, Event]:
    if isinstance(data, dict) and "ddl" in data:  # a captured schema change
        return lsn, xid, Ddl(data["ddl"], data["path"], data["user"], data["tag"])
    if isinstance(data, dict):  # a watermark capture's row
        return lsn, xid, Change(data["op"], [tuple(data["table"])], new=data["new"])
    return lsn, xid, parse_line(data)


def now_utc() -> datetime:
    return datetime.now(UTC)
