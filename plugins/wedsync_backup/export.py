"""Prioritized, parallel export of a whole database from one consistent snapshot.

One transaction exports a snapshot; ``pg_dump`` (schema: pre-data and post-data sections) and every COPY
worker import it, so schema, data and sequence values all describe the same instant. Every table of the
included schemas is exported: the policy's priority lists only decide the order. Large tables are split by
block range into parts that workers export side by side (and that a restore loads side by side).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg

from wedsync_backup.crypto import DataKey, Keyring
from wedsync_backup.errors import ConcurrentWriterError, WedSyncError
from wedsync_backup.large_objects import export_large_objects
from wedsync_backup.logical.ddl import (
    CAPTURE_SCHEMA,
    EARLIER_FINGERPRINT_VERSIONS,
    FINGERPRINT_VERSION,
    fingerprint_query,
)
from wedsync_backup.logical.objects import read_schema_objects
from wedsync_backup.manifest import (
    ChainSection,
    Manifest,
    Provenance,
    SequenceEntry,
    StoredObject,
    TableEntry,
    backup_prefix,
    content_checksum,
)
from wedsync_backup.parallel import Crew, run_crew
from wedsync_backup.pg import (
    PgTarget,
    end_process,
    find_tool,
    pg_error_is_transient,
    qualified,
    quote_ident,
    server_major,
    spawn_tool,
    tool_error,
)
from wedsync_backup.pipeline import EncodeResult, encode_to_storage
from wedsync_backup.policy import DEFAULT_ZSTD_LEVEL
from wedsync_backup.repository import begin_attempt, seal_pending
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)

PRIORITY_ORDER = {"critical": 0, "high": 1, "standard": 2}
COPY_BATCH = 1 << 20
SYSTEM_SCHEMA_FILTER = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%' "
    "AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname <> ALL(%(exclude)s) "
    "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
    "AND d.objid = c.oid AND d.deptype = 'e')"
)


@dataclass(frozen=True)
class ConsistentPoint:
    snapshot: str
    lsn: str
    txid_snapshot: str
    time: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "lsn": self.lsn,
            "txid_snapshot": self.txid_snapshot,
            "time": self.time,
        }


@dataclass
class TableInfo:
    schema: str
    name: str
    relkind: str
    parent: str | None
    columns: list[str]
    pages: int
    priority: str = "standard"
    index_entries: list[str] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Part:
    table_index: int
    part_no: int
    first_page: int | None  # None: the whole table
    last_page: int | None  # exclusive; None: to the end
    key: str = ""


@dataclass
class ExportOptions:
    workers: int = 2
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    split_pages: int = 32768  # 256 MiB of 8 kB pages per part
    slot: str | None = None  # start an incremental chain: create this logical slot, export in its snapshot
    # called with the snapshot's name while it is held (another reader imports it: the files capture)
    on_snapshot: Callable[[str], None] | None = None
    # called (from a worker thread: it must not block) with each table part once every target committed it
    on_stored: Callable[[StoredObject], None] | None = None
    exclude_schemas: tuple[str, ...] = ()
    priority_of: Callable[[str, str], str] = field(default=lambda schema, table: "standard")


@contextmanager
def exported_snapshot(
    source: PgTarget, slot: str | None = None
) -> Iterator[tuple[psycopg.Connection, ConsistentPoint]]:
    """Hold a REPEATABLE READ transaction whose snapshot the other sessions import.

    With ``slot``, the snapshot is the one a new logical replication slot exports, so the slot's change
    stream (the incremental chain) starts exactly where this backup's data ends.
    """
    if slot is None:
        conn = source.connect(autocommit=False)
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snap, lsn, txs, at = conn.execute(
                "SELECT pg_export_snapshot(), pg_current_wal_lsn()::text, txid_current_snapshot()::text, now()"
            ).fetchone()
            yield conn, ConsistentPoint(snap, lsn, txs, at.astimezone(UTC).isoformat())
        finally:
            conn.close()
        return
    from wedsync_backup.logical.slot import slot_with_snapshot

    with slot_with_snapshot(source, slot) as (snap, lsn):
        conn = source.connect(autocommit=False)
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{snap}'")
            txs, at = conn.execute("SELECT txid_current_snapshot()::text, now()").fetchone()
            point = ConsistentPoint(snap, lsn, txs, at.astimezone(UTC).isoformat())
            yield conn, point
        finally:
            conn.close()


def discover_tables(conn: psycopg.Connection, options: ExportOptions) -> list[TableInfo]:
    """Every table that holds rows in the included schemas, in export order (priority, then size)."""
    rows = conn.execute(
        f"""
        SELECT n.nspname, c.relname, c.relkind::text,
               (SELECT pn.nspname || '.' || pc.relname FROM pg_inherits i
                  JOIN pg_class pc ON pc.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = pc.relnamespace
                 WHERE i.inhrelid = c.oid AND c.relispartition LIMIT 1),
               ARRAY(SELECT a.attname::text FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                        AND a.attgenerated = '' ORDER BY a.attnum),
               (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint,
               ARRAY(SELECT CASE WHEN con.conname IS NULL THEN 'INDEX ' || ic.relname
                                 ELSE 'CONSTRAINT ' || c.relname || ' ' || con.conname END
                       FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                       LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = c.oid
                                                  AND con.contype IN ('p', 'u', 'x')
                      WHERE i.indrelid = c.oid ORDER BY ic.relname)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {SYSTEM_SCHEMA_FILTER}
        """,
        {"exclude": list(options.exclude_schemas)},
    ).fetchall()
    tables = [
        TableInfo(s, n, k, p, list(cols), int(pages), index_entries=list(idx)) for s, n, k, p, cols, pages, idx in rows
    ]
    for t in tables:
        t.priority = options.priority_of(t.schema, t.name)
        if t.parent and t.priority == "standard":
            ps, pn = t.parent.split(".", 1)
            t.priority = options.priority_of(ps, pn)  # a partition inherits its parent's priority
    tables.sort(key=lambda t: (PRIORITY_ORDER[t.priority], -t.pages, t.schema, t.name))
    return tables


def read_sequences(conn: psycopg.Connection, options: ExportOptions) -> list[SequenceEntry]:
    seqs = conn.execute(
        f"""SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'S' AND {SYSTEM_SCHEMA_FILTER} ORDER BY 1, 2""",
        {"exclude": list(options.exclude_schemas)},
    ).fetchall()
    out = []
    for schema, name in seqs:
        last, called = conn.execute(f"SELECT last_value, is_called FROM {qualified(schema, name)}").fetchone()
        out.append(SequenceEntry(schema, name, int(last), bool(called)))
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]


def plan_parts(backup_id: str, tables: list[TableInfo], split_pages: int) -> list[Part]:
    parts: list[Part] = []
    for i, t in enumerate(tables):
        n = max(1, -(-t.pages // split_pages)) if split_pages > 0 else 1
        for p in range(n):
            first = None if n == 1 else p * split_pages
            last = None if p == n - 1 else (p + 1) * split_pages
            key = f"{backup_prefix(backup_id)}data/{i:05d}-{_safe(t.qualified)}-{p:03d}.wsb"
            parts.append(Part(i, p, first, last, key))
    return parts


def _copy_sql(t: TableInfo, part: Part) -> str:
    cols = ", ".join(quote_ident(c) for c in t.columns)
    if part.first_page is None and part.last_page is None:
        return f"COPY {qualified(t.schema, t.name)} ({cols}) TO STDOUT"
    cond = []
    if part.first_page is not None:
        cond.append(f"ctid >= '({part.first_page},0)'::tid")
    if part.last_page is not None:
        cond.append(f"ctid < '({part.last_page},0)'::tid")
    return f"COPY (SELECT {cols} FROM ONLY {qualified(t.schema, t.name)} WHERE {' AND '.join(cond)}) TO STDOUT"


def _copy_chunks(conn: psycopg.Connection, sql: str) -> Iterator[bytes]:
    buf = bytearray()
    with conn.cursor() as cur, cur.copy(sql) as copy:
        for data in copy:
            buf += data
            if len(buf) >= COPY_BATCH:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


def _dump_schema(
    source: PgTarget,
    storage: Storage,
    key: str,
    data_key: DataKey,
    snapshot: str,
    options: ExportOptions,
    major: int,
) -> tuple[EncodeResult, str]:
    pg_dump = find_tool("pg_dump", major)
    cmd = [
        str(pg_dump),
        "--format=custom",
        "--compress=0",
        "--section=pre-data",
        "--section=post-data",
        f"--snapshot={snapshot}",
        "--no-sync",
    ]
    # pg_dump patterns fold case unless quoted: quote so "Wedding Data" means exactly that schema
    cmd += ['--exclude-schema="{}"'.format(s.replace('"', '""')) for s in options.exclude_schemas]
    cmd.append(f"--dbname={source.tool_dsn()}")
    version = subprocess.run([str(pg_dump), "--version"], capture_output=True, text=True).stdout.strip()
    with tool_stream(cmd, source, "pg_dump", "schema") as chunks:
        result = encode_to_storage(chunks, storage, key, data_key, zstd_level=options.zstd_level)
    return result, version


F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20  # a tool's stdout pipe holds one COPY_BATCH: one read per batch, not one per 64 KiB


@contextmanager
def tool_stream(
    cmd: list[str], source: PgTarget, tool: str, what: str, crew: Crew | None = None
) -> Iterator[Iterator[bytes]]:
    """Run a client tool for ``source`` and give its stdout as ``COPY_BATCH`` pieces; a failed exit raises (as
    the last piece would be read, so a truncated stream is never stored).

    However the consumer ends (a full disk, a target error, a task timeout), the tool is ended on the way out,
    so it neither hangs on a full pipe nor keeps its snapshot or session open on the source. With ``crew``, a
    failure in another worker ends it at once.
    """
    proc = spawn_tool(cmd, source, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    with contextlib.suppress(OSError):  # Linux only; the default 64 KiB pipe still works, with more reads
        fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
    if crew is not None:
        crew.enlist_process(proc)
    # stderr is drained beside stdout: the tool must never block on either pipe while we read the other
    err = bytearray()
    drain = threading.Thread(target=lambda: err.extend(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()

    def chunks() -> Iterator[bytes]:
        while piece := proc.stdout.read(COPY_BATCH):  # type: ignore[union-attr]
            yield piece
        code = proc.wait()
        drain.join()
        if code != 0:
            raise tool_error(tool, source, code, err.decode(errors="replace"), what)

    try:
        yield chunks()
    finally:
        end_process(proc)  # nothing to do when it ended by itself
        proc.stdout.close()
        drain.join(timeout=5)


def _copy_command(source: PgTarget, psql: Path, snapshot: str, sql: str) -> list[str]:
    """``psql`` running one COPY ... TO STDOUT in the exported snapshot (a session of its own).

    Why psql rather than this process's connection: libpq hands COPY data over one row per call, and through
    psycopg each row costs a Python call here (about 3 s of CPU for 5 million rows, holding the GIL that the
    compressing threads need). psql does the same per-row work in C into a pipe read here 1 MiB at a time.
    """
    return [
        str(psql),
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        f"--dbname={source.tool_dsn()}",
        "--command=RESET client_encoding",  # the database's encoding, as this process's own sessions use
        "--command=BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        f"--command=SET TRANSACTION SNAPSHOT '{snapshot}'",
        f"--command={sql}",
        "--command=COMMIT",
    ]


@contextmanager
def backup_writer_lock(source: PgTarget, backup_id: str) -> Iterator[None]:
    """Be the only writer of ``backup_id``: a session advisory lock on the source, held for the whole export.

    The lock lives in a server session, so a writer killed outright (SIGKILL) releases it with its
    connection, and a retry can take over; a second run of the same backup meanwhile is refused.
    """
    with source.connect(autocommit=True) as conn:
        got, holder = conn.execute(
            "SELECT pg_try_advisory_lock(k), (SELECT min(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND ((classid::bigint << 32) | objid::bigint) = k AND objsubid = 1) "
            "FROM (SELECT hashtextextended(%s, 0) AS k) s",
            (f"wedsync-backup-writer:{backup_id}",),
        ).fetchone()
        if not got:
            raise ConcurrentWriterError(
                f"Backup {backup_id} is being written by another run right now (session pid {holder} on "
                f"{source.label})",
                "two writers on one backup would mix their objects",
                "let that run finish (or stop it); this run does not touch the backup",
            )
        yield


def run_export(
    source: PgTarget,
    storage: Storage,
    keyring: Keyring,
    *,
    backup_id: str,
    backup_type: str = "full",
    options: ExportOptions | None = None,
    parent_backup_id: str | None = None,
    extra: dict[str, Any] | None = None,
    chain: ChainSection | None = None,
    provenance: Provenance | None = None,
) -> Manifest:
    """Export the database to ``storage`` and leave the (pending) manifest beside the objects.

    Idempotent: a retry first clears what an earlier attempt of the same backup left behind, and a backup
    that is already committed is returned as it is.
    """
    options = options or ExportOptions()
    # our DDL capture (logical/ddl.py) lives on the source but is never user schema: never backed up
    options = replace(options, exclude_schemas=(*options.exclude_schemas, CAPTURE_SCHEMA))
    try:
        with backup_writer_lock(source, backup_id):
            return _export(
                source, storage, keyring, backup_id, backup_type, options, parent_backup_id, extra, chain, provenance
            )
    except psycopg.Error as e:  # the source failed mid-work: say so, and whether a retry can help
        transient = bool(pg_error_is_transient(e))
        raise WedSyncError(
            f"Export of {backup_id} from {source.describe()} failed",
            str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
            "the task is retried (a restart or failover passes)" if transient else "fix the cause and re-run",
            transient=transient,
        ) from e


def _export(
    source: PgTarget,
    storage: Storage,
    keyring: Keyring,
    backup_id: str,
    backup_type: str,
    options: ExportOptions,
    parent_backup_id: str | None,
    extra: dict[str, Any] | None,
    chain: ChainSection | None,
    provenance: Provenance | None,
) -> Manifest:
    done = begin_attempt(storage, backup_id)
    if done is not None:
        return done

    data_key = keyring.new_data_key(backup_id)
    with exported_snapshot(source, options.slot) as (holder, point):
        major = server_major(holder)
        tables = discover_tables(holder, options)
        sequences = read_sequences(holder, options)
        info = holder.execute(
            "SELECT current_database(), current_setting('server_version'), "
            "(SELECT system_identifier::text FROM pg_control_system())"
        ).fetchone()
        parts = plan_parts(backup_id, tables, options.split_pages)
        extra = dict(extra or {})
        if options.slot:  # the schema the chain starts from, read in the very snapshot the data comes from
            holder.execute("SET LOCAL search_path = pg_catalog")
            fingerprint, *earlier = (
                holder.execute(fingerprint_query(options.exclude_schemas, version).encode()).fetchone()[0]
                for version in (FINGERPRINT_VERSION, *EARLIER_FINGERPRINT_VERSIONS)
            )
            holder.execute("RESET search_path")
            objects = read_schema_objects(holder, options.exclude_schemas).to_json()
            by_version = {fp.split(":", 1)[0]: fp for fp in earlier}  # {"v2": "v2:..."}
            if chain is not None:
                chain = replace(
                    chain, schema_fingerprint=fingerprint, schema_objects=objects, earlier_fingerprints=by_version
                )
            else:
                extra["schema_fingerprint"], extra["schema_objects"] = fingerprint, objects
                extra["earlier_fingerprints"] = by_version
        log.info(
            "Exporting %d tables (%d parts, %d sequences) of %s at LSN %s with %d workers",
            len(tables),
            len(parts),
            len(sequences),
            info[0],
            point.lsn,
            options.workers,
        )
        schema_result, pg_dump_version = _dump_schema(
            source, storage, f"{backup_prefix(backup_id)}schema.wsb", data_key, point.snapshot, options, major
        )
        results = _export_parts(source, storage, data_key, point.snapshot, tables, parts, options, major)
        large_objects = export_large_objects(holder, storage, backup_id, data_key, options.zstd_level)
        if large_objects:
            extra["large_objects"] = large_objects
        if options.on_snapshot is not None:  # last, while still held: the other reader starts right after
            options.on_snapshot(point.snapshot)

    entries = []
    for i, t in enumerate(tables):
        mine = sorted((p for p in parts if p.table_index == i), key=lambda p: p.part_no)
        objs = [results[p.key].stored_object() for p in mine]
        entries.append(
            TableEntry(
                schema=t.schema,
                name=t.name,
                priority=t.priority,
                columns=t.columns,
                row_count=sum(results[p.key].newlines for p in mine),
                parts=objs,
                content_sha256=content_checksum(objs),
                relkind=t.relkind,
                parent=t.parent,
                index_entries=t.index_entries,
            )
        )
    manifest = Manifest(
        backup_id=backup_id,
        backup_type=backup_type,
        created_at=point.time,
        source={
            "database": info[0],
            "server_version": info[1],
            "system_identifier": info[2],
            "label": source.label,
        },
        consistent_point={**point.as_dict(), **({"slot": options.slot} if options.slot else {})},
        encryption=data_key.manifest_section(),
        compression={"algorithm": "zstd", "level": options.zstd_level},
        schema={
            "object": schema_result.stored_object().__dict__,
            "format": "pg_dump-custom",
            "sections": ["pre-data", "post-data"],
            "pg_dump_version": pg_dump_version,
            "exclude_schemas": [s for s in options.exclude_schemas if s != CAPTURE_SCHEMA],
        },
        tables=entries,
        sequences=sequences,
        parent_backup_id=parent_backup_id,
        extra=extra,
        chain=chain,
        provenance=provenance,
    )
    seal_pending(storage, manifest, data_key)
    log.info(
        "Exported %s: %d rows, %d bytes plaintext, %d bytes stored",
        backup_id,
        manifest.total_rows,
        manifest.plain_bytes,
        manifest.stored_bytes,
    )
    return manifest


def _export_parts(
    source: PgTarget,
    storage: Storage,
    data_key: DataKey,
    snapshot: str,
    tables: list[TableInfo],
    parts: list[Part],
    options: ExportOptions,
    major: int,
) -> dict[str, EncodeResult]:
    """Workers take parts off one queue, in order; each part is one COPY in the shared snapshot.

    Beside the ``options.workers`` that take the queue from its front (the largest parts first), one more
    worker (when they are more than one) takes the small parts from its back. A small part costs round
    trips (a session, a request per target, a read-back) more than CPU: done last, by every worker, they
    left the CPUs idle at the end of the export; done beside the large ones, they fill the time those
    workers wait. It stops at the first part that is not small, so it never holds a large part's buffers
    (memory stays bounded).
    """
    queue = list(parts)
    lock = threading.Lock()
    results: dict[str, EncodeResult] = {}
    started = time.monotonic()
    lanes = itertools.count()  # each worker's number, in the order they start

    psql = find_tool("psql", major)

    def take(small_lane: bool) -> Part | None:
        with lock:
            if not queue:
                return None
            if not small_lane:
                return queue.pop(0)
            last = queue[-1]
            return queue.pop() if _part_pages(tables[last.table_index], last) <= SMALL_PART_PAGES else None

    def worker(crew: Crew) -> None:
        with lock:
            small_lane = next(lanes) >= options.workers
        while not crew.stopped:
            part = take(small_lane)
            if part is None:
                return
            t = tables[part.table_index]
            cmd = _copy_command(source, psql, snapshot, _copy_sql(t, part))
            with tool_stream(cmd, source, "psql", f"COPY of {t.qualified}", crew) as chunks:
                res = encode_to_storage(chunks, storage, part.key, data_key, zstd_level=options.zstd_level)
            if options.on_stored is not None:
                options.on_stored(res.stored_object())
            with lock:
                results[part.key] = res
                done = len(results)
            log.info(
                "Exported %s part %d: %.1f MB -> %.1f MB stored; %d of %d parts, %.1f s",
                t.qualified,
                part.part_no,
                res.plain_bytes / 1e6,
                res.stored_bytes / 1e6,
                done,
                len(parts),
                time.monotonic() - started,
            )

    workers = min(options.workers, len(parts))
    # export.workers: 1 keeps the source to one session, so no small-parts worker then
    run_crew(workers + (1 if 1 < workers < len(parts) else 0), worker, "export")
    return results


SMALL_PART_PAGES = 2048  # 16 MiB of 8 kB pages: the export's small-parts worker takes parts up to this size


def _part_pages(t: TableInfo, part: Part) -> int:
    """The part's size in pages (of the table's size when the export planned it)."""
    first = part.first_page or 0
    last = part.last_page if part.last_page is not None else t.pages
    return max(0, last - first)
