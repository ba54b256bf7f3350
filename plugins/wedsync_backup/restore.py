"""Restore engine: a backup into an empty database, all or nothing.

Order: pre-data DDL -> table data in priority order (parts in parallel, each authenticated chunk by chunk
and checked against its checksum before it commits) -> post-data (indexes, constraints, triggers, policies,
materialized view refresh) -> sequence values. Everything is checked before the target is touched (the
manifest's MAC, the key, every object's presence and size, the target being empty); if anything fails
afterwards the target is put back as it was: empty.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError, RestoreError, WedSyncError, is_transient
from wedsync_backup.large_objects import restore_large_objects
from wedsync_backup.logical.ddl import TRIGGERS as DDL_TRIGGERS
from wedsync_backup.manifest import Manifest, StoredObject, TableEntry
from wedsync_backup.parallel import Crew, run_crew
from wedsync_backup.pg import (
    PgTarget,
    end_process,
    find_tool,
    message_is_transient,
    qualified,
    quote_ident,
    server_major,
    spawn_tool,
)
from wedsync_backup.pipeline import decode_from_storage
from wedsync_backup.restore_groups import GroupClock
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)

SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'pg_toast')"


@dataclass
class RestorePlan:
    """What a restore will do; a dry run reports it and stops."""

    backup_id: str
    from_target: str
    target: str
    tables: int
    rows: int
    stored_bytes: int
    plain_bytes: int
    consistent_time: str
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class RestoreResult:
    backup_id: str
    tables: int
    rows: int
    seconds: float
    verified_tables: int
    # seconds from the restore's start until each priority group was loaded and indexed (usable), and when
    rto_per_group: dict[str, float] = field(default_factory=dict)
    group_usable_at: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def verify_manifest_mac(manifest: Manifest, keyring: Keyring) -> None:
    data_key = keyring.unwrap(manifest.encryption["wrapped_key"], manifest.backup_id)
    expected = data_key.mac(manifest.body_bytes())
    if not manifest.mac or not hmac.compare_digest(expected, manifest.mac):
        raise IntegrityError(
            f"The manifest of backup {manifest.backup_id} failed authentication",
            "it was edited or damaged after the backup wrote it",
            "restore from another target",
        )
    keyring.remember(data_key)  # objects written before a key rotation are opened with it


def check_objects_present(manifest: Manifest, storage: Storage) -> None:
    for obj in manifest.objects():
        size = storage.size(obj.key)
        if size != obj.stored_bytes:
            state = "missing" if size is None else f"{size} bytes instead of {obj.stored_bytes}"
            raise IntegrityError(
                f"Object {obj.key} of backup {manifest.backup_id} on target {storage.name} is {state}",
                "this copy is incomplete or damaged",
                "restore from another target (from_target)",
            )


def target_contents(target: PgTarget) -> list[str]:
    """User objects already in the target database (relations, functions, types, extra schemas)."""
    with target.connect(autocommit=True) as conn:
        rows = conn.execute(
            f"""
            SELECT 'relation ' || n.nspname || '.' || c.relname FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN {SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
            UNION ALL
            SELECT 'function ' || n.nspname || '.' || p.proname FROM pg_proc p
              JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname NOT IN {SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
            UNION ALL
            SELECT 'type ' || n.nspname || '.' || t.typname FROM pg_type t
              JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname NOT IN {SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'
               AND t.typrelid = 0 AND t.typelem = 0
            UNION ALL
            SELECT 'schema ' || nspname FROM pg_namespace
             WHERE nspname NOT IN {SYSTEM_SCHEMAS} AND nspname NOT LIKE 'pg\\_%' AND nspname <> 'public'
            UNION ALL
            SELECT 'extension ' || extname FROM pg_extension WHERE extname <> 'plpgsql'
            UNION ALL
            SELECT 'large object ' || oid FROM pg_largeobject_metadata
            ORDER BY 1 LIMIT 20
            """
        ).fetchall()
    return [r[0] for r in rows]


def plan_restore(manifest: Manifest, storage: Storage, keyring: Keyring, target: PgTarget) -> RestorePlan:
    """Every check that can be made without touching the target; raises with the fix on the first fault."""
    verify_manifest_mac(manifest, keyring)
    check_objects_present(manifest, storage)
    warnings = []
    interrupted = interrupted_restore(target)
    found = [] if interrupted else target_contents(target)
    if interrupted:
        warnings.append(
            f"the target holds a restore of {interrupted.get('backup_id')} that was interrupted (the process "
            "died): it is cleared first, putting the target back as it was"
        )
    if found:
        raise RestoreError(
            f"Restore target {target.label} (database {target.dbname}) is not empty",
            f"it already holds {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}",
            "restore into a new empty database (CREATE DATABASE ...) and point the target connection at it",
        )
    _pg_restore_for(target)  # the client tool for the target's server is installed
    return RestorePlan(
        backup_id=manifest.backup_id,
        from_target=storage.name,
        target=f"{target.label} ({target.host}:{target.port}/{target.dbname})",
        tables=len(manifest.tables),
        rows=manifest.total_rows,
        stored_bytes=manifest.stored_bytes,
        plain_bytes=manifest.plain_bytes,
        consistent_time=manifest.consistent_point.get("time", manifest.created_at),
        warnings=warnings,
    )


# A restore marks its target while it works, so that if it is killed outright (no clean-up can run), the
# retry knows that what it finds there is an interrupted restore and how to put the target back as it was.
RESTORE_MARK = "wedsync_restore_in_progress"


def interrupted_restore(target: PgTarget) -> dict[str, object] | None:
    """The mark an interrupted restore left in ``target`` (backup id, original schema public), or None."""
    with target.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (RESTORE_MARK,)
        ).fetchone()
    if row is None:
        return None
    try:
        return dict(json.loads(row[0] or "{}"))
    except ValueError:
        return {}


def _mark_restore(target: PgTarget, backup_id: str, public_state: PublicState | None) -> None:
    text = json.dumps({"backup_id": backup_id, "public": public_state})
    with target.connect(autocommit=False) as conn:
        conn.execute(f"CREATE SCHEMA {quote_ident(RESTORE_MARK)}")
        conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(RESTORE_MARK), sql.Literal(text)))
        conn.commit()


def _unmark_restore(target: PgTarget) -> None:
    with target.connect(autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(RESTORE_MARK)}")


# The sessions that build indexes and constraints: index sorts in memory instead of spilling to disk (as the
# PostgreSQL manual's "Populating a Database" advises for a restore), and no wait for each commit's flush.
INDEX_BUILD_OPTIONS = "-c maintenance_work_mem=256MB -c synchronous_commit=off"


def _index_builder(target: PgTarget) -> PgTarget:
    """``target`` with :data:`INDEX_BUILD_OPTIONS` added to its sessions' options (kept: the connection's own)."""
    options = dict(target.options)
    options["options"] = f"{options.get('options', '')} {INDEX_BUILD_OPTIONS}".strip()
    return dataclasses.replace(target, options=options)


EARLY_INDEX_MIN_BYTES = 8 << 20  # smaller tables: their indexes are built with their group's (restore_groups)


def _schema_archive(manifest: Manifest, storage: Storage, keyring: Keyring) -> bytes:
    """The pg_dump archive of the schema (DDL only, no rows), verified; small enough to keep in memory."""
    return b"".join(decode_from_storage(storage, manifest.schema_object, keyring, backup_id=manifest.backup_id))


def _pg_restore_for(target: PgTarget) -> Path:
    """The pg_restore matching the target server's major version (found once per restore)."""
    with target.connect(autocommit=True) as conn:
        return find_tool("pg_restore", server_major(conn))


def _run_pg_restore(
    pg_restore: Path,
    manifest: Manifest,
    archive: bytes,
    target: PgTarget,
    args: list[str],
    toc_list: str | None = None,
) -> str:
    """pg_restore with the archive on stdin (and a TOC list on a pipe): nothing is written to disk.

    One process, never --jobs: a parallel pg_restore's workers are its own children, which do not die with a
    task process killed outright (only the process this one starts does); one waiting on a lock would go on
    writing to the target after the task is gone (fault row 6).
    """
    cmd = [str(pg_restore), *args]
    fds: list[int] = []
    list_writer = None
    if toc_list is not None:
        r, w = os.pipe()
        fds.append(r)
        cmd += ["-L", f"/dev/fd/{r}", "--exit-on-error"]

        def write_list() -> None:
            with os.fdopen(w, "w") as f:
                f.write(toc_list)

        list_writer = threading.Thread(target=write_list, daemon=True)
    if "-l" not in args:
        cmd.append(f"--dbname={target.tool_dsn()}")
    try:
        proc = spawn_tool(
            cmd, target, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=tuple(fds)
        )
    finally:
        for fd in fds:  # the child holds its own copies
            os.close(fd)
    try:
        if list_writer is not None:
            list_writer.start()
        out, err = proc.communicate(archive)
    except BaseException:
        end_process(proc)  # a timeout or kill of the task: pg_restore must not go on writing to the target
        raise
    if list_writer is not None:
        list_writer.join()
    if proc.returncode != 0:
        message = err.decode(errors="replace")
        raise RestoreError(
            f"pg_restore ({' '.join(args) or 'list'}) of backup {manifest.backup_id} failed",
            message.strip()[-2000:],
            "see the error above (a missing role or extension on the target server is the usual cause)",
            transient=bool(message_is_transient(message)),
        )
    return out.decode(errors="replace")


def _post_data_entries(pg_restore: Path, manifest: Manifest, archive: bytes, target: PgTarget) -> list[str]:
    """The archive's TOC lines of the post-data section, as `pg_restore -l` prints them."""
    listing = _run_pg_restore(pg_restore, manifest, archive, target, ["--section=post-data", "-l"])
    return [line for line in listing.splitlines() if line and not line.startswith(";") and not _ours(line)]


def _ours(line: str) -> bool:
    """Our DDL capture's event triggers (pg_dump cannot leave them out): never restored as user schema."""
    return any(f" EVENT TRIGGER - {name} " in line for name in DDL_TRIGGERS)


def _load_part(
    conn: psycopg.Connection,
    table: TableEntry,
    obj: StoredObject,
    storage: Storage,
    keyring: Keyring,
    backup_id: str,
) -> int:
    cols = ", ".join(quote_ident(c) for c in table.columns)
    sql = f"COPY {qualified(table.schema, table.name)} ({cols}) FROM STDIN"
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(sql) as copy:
            for piece in decode_from_storage(storage, obj, keyring, backup_id=backup_id):
                copy.write(piece)
        # decode_from_storage has verified sizes and checksums when the loop ends; only then commit
        return cur.rowcount


class Progress:
    """The load's progress in the task log, a line per table loaded: tables, bytes and time so far (a restore of
    a large database is long; the on-call engineer watching it sees that it moves and how far it is)."""

    def __init__(self, tables: int, plain_bytes: int) -> None:
        self.tables, self.total = tables, max(plain_bytes, 1)
        self.tables_done = self.bytes_done = 0
        self.started = time.monotonic()

    def done(self, plain_bytes: int, table: TableEntry | None) -> None:
        """A part is in (``table``: its table's last one)."""
        self.bytes_done += plain_bytes
        if table is None:
            return
        self.tables_done += 1
        log.info(
            "Loaded %s (%s): %d rows; %d of %d tables, %.0f of %.0f MB (%.0f%%), %.1f s",
            table.qualified,
            table.priority,
            table.row_count,
            self.tables_done,
            self.tables,
            self.bytes_done / 1e6,
            self.total / 1e6,
            100 * self.bytes_done / self.total,
            time.monotonic() - self.started,
        )


def _load_data(
    manifest: Manifest,
    storage: Storage,
    keyring: Keyring,
    target: PgTarget,
    workers: int,
    on_table_loaded: Callable[[TableEntry], None] | None = None,
) -> dict[str, int]:
    """Load every part, in priority order, ``workers`` at a time.

    When a table's last part is in, the worker that loaded it calls ``on_table_loaded`` (to build that
    table's indexes while the other workers go on loading), as pg_restore -j does.
    """
    queue = [(t, obj) for t in manifest.tables for obj in t.parts]  # manifest order is priority order
    remaining = {t.qualified: len(t.parts) for t in manifest.tables}
    lock = threading.Lock()
    loaded: dict[str, int] = {}
    progress = Progress(len(manifest.tables), manifest.plain_bytes)

    def worker(crew: Crew) -> None:
        with crew.enlist(target.connect(autocommit=True)) as conn:
            conn.execute("SET synchronous_commit = off")
            while not crew.stopped:
                with lock:
                    if not queue:
                        return
                    table, obj = queue.pop(0)
                n = _load_part(conn, table, obj, storage, keyring, manifest.backup_id)
                with lock:
                    loaded[table.qualified] = loaded.get(table.qualified, 0) + n
                    remaining[table.qualified] -= 1
                    last = remaining[table.qualified] == 0
                    progress.done(obj.plain_bytes, table if last else None)
                if last and on_table_loaded is not None:
                    on_table_loaded(table)

    run_crew(min(workers, len(queue)), worker, "restore")
    for t in manifest.tables:
        if loaded.get(t.qualified, 0) != t.row_count:
            raise IntegrityError(
                f"Table {t.qualified} received {loaded.get(t.qualified, 0)} rows, the backup holds {t.row_count}",
                "the restore did not load what the manifest promises",
                "restore from another target",
            )
    return loaded


def _set_sequences(manifest: Manifest, target: PgTarget) -> None:
    with target.connect(autocommit=False) as conn:
        for s in manifest.sequences:
            conn.execute(
                "SELECT setval(%s::regclass, %s, %s)",
                (qualified(s.schema, s.name), s.last_value, s.is_called),
            )
        conn.commit()


PublicState = tuple[str, list[tuple[str, str]], str | None]
# Schema public as CREATE DATABASE makes it (PostgreSQL 15+): what an empty restore target starts from.
FRESH_PUBLIC: PublicState = (
    "pg_database_owner",
    [("pg_database_owner", "USAGE"), ("pg_database_owner", "CREATE"), ("PUBLIC", "USAGE")],
    "standard public schema",
)


def _public_schema_state(target: PgTarget) -> PublicState | None:
    """Owner, grants and comment of schema public, to put it back exactly if a restore fails."""
    with target.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(nspowner), obj_description(oid, 'pg_namespace'), "
            "ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END"
            "      || ':' || a.privilege_type FROM aclexplode(nspacl) a) "
            "FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone()
    if row is None:
        return None
    grants = [tuple(g.split(":", 1)) for g in row[2]]
    return row[0], grants, row[1]  # type: ignore[return-value]


def reset_target(target: PgTarget, public_state: PublicState | None) -> None:
    """Put an (originally empty) target back as it was: drop everything the restore created."""
    with target.connect(autocommit=False) as conn:
        schemas = [
            r[0]
            for r in conn.execute(
                f"SELECT nspname FROM pg_namespace WHERE nspname NOT IN {SYSTEM_SCHEMAS} AND nspname NOT LIKE 'pg\\_%'"
            ).fetchall()
        ]
        conn.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
        for ext in conn.execute("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'").fetchall():
            conn.execute(f"DROP EXTENSION IF EXISTS {quote_ident(ext[0])} CASCADE")
        for s in schemas:
            conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(s)} CASCADE")
        if public_state is not None:
            owner, grants, comment = public_state
            conn.execute(f"CREATE SCHEMA public AUTHORIZATION {quote_ident(owner)}")
            for grantee, privilege in grants:
                who = "PUBLIC" if grantee == "PUBLIC" else quote_ident(grantee)
                if grantee != owner:
                    conn.execute(f"GRANT {privilege} ON SCHEMA public TO {who}")
            if comment is not None:
                conn.execute(sql.SQL("COMMENT ON SCHEMA public IS {}").format(sql.Literal(comment)))
        conn.commit()


def _public_state_before(mark: dict[str, object]) -> PublicState | None:
    """Schema public as it was before the marked restore began (its mark keeps it, as JSON lists)."""
    saved = mark.get("public")
    if not isinstance(saved, list):
        return None
    return saved[0], [(g[0], g[1]) for g in saved[1]], saved[2]


@dataclass(frozen=True)
class PutBack:
    """What :func:`put_back_interrupted` did to a restore target, and why."""

    put_back: bool
    message: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def put_back_interrupted(target: PgTarget, backup_id: str) -> PutBack:
    """Put ``target`` back as it was before an interrupted restore of ``backup_id``: only when it carries that
    restore's mark. A target not marked, or marked by another backup's restore, is not ours to touch."""
    mark = interrupted_restore(target)
    if mark is None:
        return PutBack(
            False,
            f"left {target.label} as it is: it carries no restore mark, so the restore of {backup_id} did not "
            "leave it half-loaded (it put it back itself, finished, or never began)",
        )
    if mark.get("backup_id") != backup_id:
        return PutBack(
            False,
            f"left {target.label} as it is: its restore mark is of backup {mark.get('backup_id')}, not of "
            f"{backup_id}, so it is not this restore's work",
        )
    reset_target(target, _public_state_before(mark))
    return PutBack(True, f"put {target.label} back as it was (empty): the restore of {backup_id} was interrupted")


def restore_backup(
    manifest: Manifest,
    storage: Storage,
    keyring: Keyring,
    target: PgTarget,
    *,
    workers: int = 2,
    on_table_loaded: Callable[[TableEntry], None] | None = None,
    keep_mark: bool = False,
) -> RestoreResult:
    """Restore ``manifest``'s backup from ``storage`` into the empty database ``target``; all or nothing.

    ``on_table_loaded`` is told as soon as each table's data is in (restore drills time priority groups).
    ``keep_mark``: the target stays marked as an interrupted restore for the caller to finish and unmark (a
    point-in-time restore replays its chain first: killed in the replay, it is still known half-done).
    """
    started = time.monotonic()
    plan_restore(manifest, storage, keyring, target)
    interrupted = interrupted_restore(target)
    if interrupted is not None:
        log.warning(
            "%s holds an interrupted restore of %s: putting it back as it was first",
            target.label,
            interrupted.get("backup_id"),
        )
        public_state = _public_state_before(interrupted)
        reset_target(target, public_state)
    else:
        public_state = _public_schema_state(target)
    log.info("Restoring %s from %s into %s", manifest.backup_id, storage.name, target.label)
    try:
        _mark_restore(target, manifest.backup_id, public_state)
        archive = _schema_archive(manifest, storage, keyring)
        pg_restore = _pg_restore_for(target)
        _run_pg_restore(
            pg_restore,
            manifest,
            archive,
            target,
            ["--section=pre-data", "--exit-on-error", "--single-transaction"],
        )
        post_data = _post_data_entries(pg_restore, manifest, archive, target)
        clock = GroupClock(manifest.tables, post_data, lambda t: t.plain_bytes >= EARLY_INDEX_MIN_BYTES, started)

        builder = _index_builder(target)

        def build(entries: list[str]) -> None:
            # one pg_restore process (see _run_pg_restore); several at once measured no faster (bench/RESULTS.md)
            _run_pg_restore(pg_restore, manifest, archive, builder, [], toc_list="\n".join(entries) + "\n")

        def table_loaded(table: TableEntry) -> None:
            if on_table_loaded is not None:
                on_table_loaded(table)
            clock.table_loaded(table, build)

        loaded = _load_data(manifest, storage, keyring, target, workers, on_table_loaded=table_loaded)
        with target.connect(autocommit=True) as conn:
            restore_large_objects(manifest, storage, keyring, conn)
        rest = [line for line in post_data if line not in clock.built]
        if rest:
            log.info(
                "Creating the remaining %d constraints, triggers and policies (%.1f s so far)",
                len(rest),
                time.monotonic() - started,
            )
            # foreign keys, triggers, policies: one pg_restore, one transaction (see _run_pg_restore: no --jobs)
            _run_pg_restore(
                pg_restore, manifest, archive, builder, ["--single-transaction"], toc_list="\n".join(rest) + "\n"
            )
        clock.finish()  # a group none of whose tables had rows to load is usable now
        _set_sequences(manifest, target)
        if not keep_mark:
            _unmark_restore(target)
    except BaseException as e:
        log.error("Restore of %s failed, putting %s back as it was: %s", manifest.backup_id, target.label, e)
        try:
            reset_target(target, public_state)
        except Exception as cleanup_error:  # report both: the cause first
            if not isinstance(e, Exception):
                raise  # a timeout or kill still ends the task; the mark lets the retry clean up
            raise RestoreError(
                f"Restore of backup {manifest.backup_id} failed ({e}) and so did the clean-up",
                str(cleanup_error),
                "run the restore again: it clears the interrupted attempt first (or drop and re-create "
                f"database {target.dbname} by hand)",
                transient=is_transient(cleanup_error),
            ) from e
        if not isinstance(e, Exception) or isinstance(e, WedSyncError):
            raise  # a timeout or a kill propagates as itself, after the clean-up
        raise RestoreError(
            f"Restore of backup {manifest.backup_id} into {target.label} failed",
            str(e),
            "the target was put back as it was; fix the cause and run the restore again",
            transient=is_transient(e),
        ) from e
    return RestoreResult(
        backup_id=manifest.backup_id,
        tables=len(manifest.tables),
        rows=sum(loaded.values()),
        seconds=round(time.monotonic() - started, 3),
        verified_tables=len(manifest.tables),
        rto_per_group=clock.rto_per_group(),
        group_usable_at=dict(clock.usable_at),
    )


def iter_parts(manifest: Manifest) -> Iterator[tuple[TableEntry, StoredObject]]:
    for t in manifest.tables:
        for p in t.parts:
            yield t, p
