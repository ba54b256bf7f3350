"""Restore drills: prove a backup by restoring it into a scratch database and checking what came back.

A drill creates a fresh scratch database on the drill server, restores the backup into it (or the backup's
chain up to a moment, for a point-in-time drill), checks every table's row count and content checksum
against the manifest, runs the policy's validation queries (invariants that must return no rows), and drops
the scratch database at the end, pass or fail. It measures the RTO: the whole restore, and the moment each
priority group's data was in. The result is recorded in ``backup_tests`` (test_type ``restore_test``).

A copy that cannot be restored (damaged, missing objects) is noted and the next copy is tried: the drill
proves the *backup*; the scrub repairs copies. Copies the catalog knows to be damaged are skipped, and the
drill says so. Nothing here knows Airflow: alerts go through the ``notify`` callable.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from wedsync_backup import alerts
from wedsync_backup.alerts import Alert
from wedsync_backup.assurance_policy import ValidationQuery
from wedsync_backup.backup_tests import BackupTest, record_test
from wedsync_backup.catalog import Catalog
from wedsync_backup.commands.resources import NothingToDo
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError, CryptoError, IntegrityError, StorageError, WedSyncError
from wedsync_backup.files.check import drill_files
from wedsync_backup.manifest import Manifest, TableEntry
from wedsync_backup.pg import PgTarget, qualified, quote_ident
from wedsync_backup.pipeline import decode_from_storage
from wedsync_backup.pitr import ChainPlan, chain_of, plan_chain, restore_to_point
from wedsync_backup.policy import PRIORITY_GROUPS
from wedsync_backup.repository import committed_manifests, read_manifest
from wedsync_backup.restore import restore_backup
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
SCRATCH_PREFIX = "wedsync_drill_"
RESTORABLE_TYPES = ("full", "archive", "manual")
VALIDATION_TIMEOUT_MS = 10 * 60 * 1000
# A copy that fails this way is damaged: the drill notes it and tries the next copy.
COPY_FAULTS = (IntegrityError, CryptoError, StorageError)


# --- the scratch database --------------------------------------------------------------------------------
def scratch_name(key: str, prefix: str = SCRATCH_PREFIX) -> str:
    """A stable scratch database name per drill run (a retry reuses, and first drops, its own)."""
    return prefix + hashlib.sha256(key.encode()).hexdigest()[:12]


def _drop(server: PgTarget, name: str) -> None:
    with server.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def scratch_database(server: PgTarget, name: str, prefix: str = SCRATCH_PREFIX) -> Iterator[PgTarget]:
    """A fresh empty database ``name`` on ``server``, dropped at the end whatever happens."""
    if not name.startswith(prefix):
        raise ConfigError(f"Refusing to use '{name}' as a scratch database", fix=f"its name must start {prefix}")
    _drop(server, name)
    try:
        with server.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as e:
        raise ConfigError(
            f"Cannot create the scratch database {name} through connection {server.label}",
            str(e).strip(),
            f"give the user {server.user} the CREATEDB privilege on that server, or point {server.label} at a "
            "server where it may create and drop databases",
        ) from e
    try:
        yield server.with_db(name)
    finally:
        try:
            _drop(server, name)
        except WedSyncError as e:  # never hide the drill's own outcome; say what to clean up
            log.error("Could not drop scratch database %s on %s: %s. Drop it by hand", name, server.label, e)


# --- checks ----------------------------------------------------------------------------------------------
def _line_multiset(chunks: Iterable[bytes | memoryview]) -> tuple[int, int]:
    """(rows, order-independent digest) of COPY text: the sum of every line's hash.

    Both sides are hashed in the same process (the same hash seed), and the data itself was authenticated
    by AES-GCM on the way in: this only has to tell two row sets apart, which 64-bit sums do.
    """
    acc, n, rest = 0, 0, b""
    for chunk in chunks:
        lines = (rest + bytes(chunk)).split(b"\n")
        rest = lines.pop()
        acc += sum(map(hash, lines))
        n += len(lines)
    return n, acc


def _copy_out(conn: psycopg.Connection, table: TableEntry) -> Iterator[memoryview]:
    cols = ", ".join(quote_ident(c) for c in table.columns)
    with conn.cursor() as cur, cur.copy(f"COPY {qualified(table.schema, table.name)} ({cols}) TO STDOUT") as copy:
        yield from copy


def check_table(
    conn: psycopg.Connection, table: TableEntry, storage: Storage, keyring: Keyring, backup_id: str
) -> str | None:
    """None when the restored table holds exactly the manifest's rows; else what differs.

    A table restored from one part comes back in the order it was exported, so the sha256 of its COPY output
    must equal the part's plaintext checksum (and so its rows are the manifest's). Otherwise (several parts
    loaded in parallel, or another row order) the rows are counted and compared as multisets with the
    backup's own, decrypted and checked again.
    """
    if len(table.parts) == 1:
        h = hashlib.sha256()
        for data in _copy_out(conn, table):
            h.update(data)
        if h.hexdigest() == table.parts[0].plain_sha256:
            return None
    log.info("Drill: comparing the rows of %s with the backup's (%d parts)", table.qualified, len(table.parts))
    rows, restored = _line_multiset(_copy_out(conn, table))
    if rows != table.row_count:
        return f"table {table.qualified}: {rows} rows restored, the manifest says {table.row_count}"
    backup = _line_multiset(
        piece for p in table.parts for piece in decode_from_storage(storage, p, keyring, backup_id=backup_id)
    )
    if (rows, restored) != backup:
        return f"table {table.qualified}: the restored rows differ from the backup's (content checksum mismatch)"
    return None


def run_validation(conn: psycopg.Connection, queries: Iterable[ValidationQuery]) -> dict[str, int | str]:
    """Each invariant's number of violating rows (0: holds), or why it could not run. Row contents are never
    read: they are the platform's data."""
    out: dict[str, int | str] = {}
    for q in queries:
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute(f"SET LOCAL statement_timeout = {VALIDATION_TIMEOUT_MS}")
                row = conn.execute(f"SELECT count(*) FROM ({q.sql}) AS violations").fetchone()
            out[q.name] = int(row[0]) if row else 0
        except psycopg.Error as e:
            out[q.name] = f"could not run: {str(e).strip().splitlines()[0]}"
    return out


# --- one drill -------------------------------------------------------------------------------------------
@dataclass
class DrillResult:
    backup_id: str
    passed: bool = False
    from_target: str | None = None
    scratch_database: str | None = None
    point_in_time: str | None = None
    problems: list[str] = field(default_factory=list)
    copy_faults: dict[str, str] = field(default_factory=dict)  # copies that could not be restored, and why
    skipped_copies: dict[str, str] = field(default_factory=dict)  # copies the catalog knows to be damaged
    rto_seconds: float | None = None
    check_seconds: float | None = None  # the table checks and validation queries after the restore
    group_usable_seconds: dict[str, float] = field(default_factory=dict)
    tables_checked: int = 0
    rows_checked: int = 0
    files_checked: int = 0  # content objects of the backup's file state read back and checked
    validation: dict[str, int | str] = field(default_factory=dict)
    data_loss_detected: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def notes(self) -> str:
        parts = [f"restored from {self.from_target}" if self.from_target else "no copy could be restored"]
        if self.point_in_time:
            parts.append(f"point in time {self.point_in_time}")
        if self.rto_seconds is not None:
            groups = ", ".join(f"{g} {s:.1f}s" for g, s in self.group_usable_seconds.items())
            parts.append(f"RTO {self.rto_seconds:.1f}s ({groups})")
        if self.files_checked:
            parts.append(f"{self.files_checked} content objects of the file state read back")
        parts += [f"skipped damaged copy {t}: {why}" for t, why in self.skipped_copies.items()]
        parts += [f"copy {t} could not be restored: {why}" for t, why in self.copy_faults.items()]
        return "; ".join(parts)


def _restore_timed(
    manifest: Manifest, chain: ChainPlan | None, storage: Storage, keyring: Keyring, target: PgTarget, workers: int
) -> tuple[float, dict[str, float], dict[str, object]]:
    """Restore; returns (total seconds, seconds until each priority group's data was in, restore result)."""
    started = time.monotonic()
    loaded: dict[str, float] = {}
    lock = threading.Lock()

    def table_loaded(table: TableEntry) -> None:
        with lock:
            loaded[table.qualified] = time.monotonic() - started

    if chain is not None:
        result = restore_to_point(chain, storage, keyring, target, workers=workers, on_table_loaded=table_loaded)
    else:
        result = restore_backup(manifest, storage, keyring, target, workers=workers, on_table_loaded=table_loaded)
        result = result.as_dict()
    total = time.monotonic() - started
    groups = {}
    for group in PRIORITY_GROUPS:
        times = [loaded.get(t.qualified, total) for t in manifest.tables if t.priority == group]
        if times:
            groups[group] = round(max(times), 3)
    return round(total, 3), groups, result


def drill_copy(
    result: DrillResult,
    manifest: Manifest,
    storage: Storage,
    keyring: Keyring,
    server: PgTarget,
    *,
    scratch: str,
    queries: Iterable[ValidationQuery],
    until: datetime | None = None,
    workers: int = 2,
) -> bool:
    """Drill one copy into ``result``. False when the copy itself could not be restored (try another)."""
    chain = plan_chain(committed_manifests(storage), until) if until is not None else None
    if chain is not None and chain.full.backup_id != manifest.backup_id:
        raise ConfigError(
            f"{until.isoformat() if until else ''} is not covered by backup {manifest.backup_id}'s chain",
            f"the nearest full backup before it is {chain.full.backup_id}",
            "drill that backup, or choose a moment inside this backup's point-in-time window",
        )
    with scratch_database(server, scratch) as target:
        try:
            rto, groups, _ = _restore_timed(manifest, chain, storage, keyring, target, workers)
        except COPY_FAULTS as e:
            result.copy_faults[storage.name] = str(e)
            log.error("Drill: the %s copy of %s could not be restored: %s", storage.name, manifest.backup_id, e)
            return False
        result.from_target = storage.name
        result.scratch_database = scratch
        result.rto_seconds, result.group_usable_seconds = rto, groups
        result.point_in_time = until.isoformat() if until else None
        checks_started = time.monotonic()
        with target.connect(autocommit=True) as conn:
            conn.execute("SET synchronize_seqscans = off")  # read tables from their first block
            if chain is None or not chain.increments:
                for table in manifest.tables:
                    problem = check_table(conn, table, storage, keyring, manifest.backup_id)
                    result.tables_checked += 1
                    result.rows_checked += table.row_count
                    if problem:
                        result.problems.append(problem)
                        result.data_loss_detected = True
            tables_done = time.monotonic()
            result.validation = run_validation(conn, queries)
        if manifest.files is not None:  # the photos and documents the backup's file state lists
            result.files_checked, problems = drill_files(storage, committed_manifests(storage), manifest, keyring)
            result.problems += problems
            result.data_loss_detected |= bool(problems)
        result.check_seconds = round(time.monotonic() - checks_started, 3)
        log.info(
            "Drill checks: %d tables in %.1fs, %d validation queries in %.1fs",
            result.tables_checked,
            tables_done - checks_started,
            len(result.validation),
            time.monotonic() - tables_done,
        )
        for name, outcome in result.validation.items():
            if outcome != 0:
                what = f"{outcome} row(s) violate it" if isinstance(outcome, int) else outcome
                result.problems.append(f"validation query '{name}' failed: {what}")
    return True


# --- the command -----------------------------------------------------------------------------------------
@dataclass
class DrillRequest:
    trigger: str  # after_backup (the newest verified full) | weekly (a random older one) | manual
    backup_id: str | None = None
    until: datetime | None = None  # a point-in-time drill
    from_target: str | None = None


def choose_backup(cat: Catalog, request: DrillRequest, rng: random.Random) -> dict[str, Any]:
    """The backup to drill: named, the newest restorable one, or (weekly) a random older one."""
    if request.backup_id:
        row = cat.get_backup(request.backup_id)
        if row is None or row["status"] != "completed" or row["pruned_at"] is not None:
            state = "not in the catalog" if row is None else ("pruned" if row["pruned_at"] else row["status"])
            raise ConfigError(
                f"Backup {request.backup_id} cannot be drilled: it is {state}",
                fix="pick a completed backup (see the backup_operations table), or leave backup_id empty",
            )
        return row
    candidates = [b for b in cat.list_completed() if b["backup_type"] in RESTORABLE_TYPES]
    if not candidates:
        if request.trigger != "manual":  # a fresh installation: the first full backup's commit starts a drill
            raise NothingToDo(
                "There is no completed full backup to drill yet: this run skips. The first completed "
                "backup_daily_full triggers a drill of it (Asset wedsync_full_backup_verified)"
            )
        raise ConfigError("There is no completed full backup to drill", fix="run backup_daily_full first")
    if request.trigger == "weekly" and len(candidates) > 1:
        return rng.choice(candidates[1:])
    return candidates[0]


def healthy_copies(cat: Catalog, backup_id: str, order: list[str]) -> tuple[list[str], dict[str, str]]:
    """The backup's copies the catalog holds verified, in ``order``; and the damaged ones with why."""
    with cat.connect() as conn:
        rows = conn.execute(
            "SELECT target_name, verified, error FROM backup_replicas WHERE backup_id = %s", (backup_id,)
        ).fetchall()
    state = {r["target_name"]: r for r in rows}
    healthy = [t for t in order if t in state and state[t]["verified"]]
    damaged = {t: state[t]["error"] or "not verified" for t in order if t in state and not state[t]["verified"]}
    return healthy, damaged


def refuse_damaged_copy(cat: Catalog, backup_id: str, target: str) -> None:
    """For a restore from ``target``: refuse, naming the healthy copies, when the catalog marks it damaged."""
    row = cat.get_backup(backup_id)
    if row is None:
        return  # not in the catalog (rebuilt repository): the restore's own checks decide
    if row["status"] == "damaged":
        raise ConfigError(
            f"Backup {backup_id} is marked damaged: the scrub found no intact copy ({row['error']})",
            fix="restore another backup (mode latest or another backup_id), or a point in time before it",
        )
    roles = ("primary", "secondary", "offsite")
    names = sorted((r["target_name"] for r in row["replicas"]), key=lambda n: (roles.index(n) if n in roles else 3, n))
    healthy, damaged = healthy_copies(cat, backup_id, names)
    if target in damaged:
        raise ConfigError(
            f"The {target} copy of backup {backup_id} is marked damaged by the scrub: {damaged[target]}",
            f"the healthy copies are {', '.join(healthy) or 'none'}",
            f"set from_target to {healthy[0]}" if healthy else "restore another backup",
        )


def random_moment(manifests: list[Manifest], full: Manifest, rng: random.Random) -> datetime | None:
    """A random moment inside ``full``'s point-in-time window (None when nothing was captured after it)."""
    start = datetime.fromisoformat(full.consistent_point.get("time") or full.created_at)
    ends = [
        datetime.fromisoformat(m.extra["captured_at"]) for m in chain_of(full, manifests) if m.extra.get("captured_at")
    ]
    if not ends or max(ends) <= start:
        return None
    return start + timedelta(seconds=rng.uniform(0, (max(ends) - start).total_seconds()))


def run_drill(
    cat: Catalog,
    storages: dict[str, Storage],
    keyring: Keyring,
    server: PgTarget,
    request: DrillRequest,
    *,
    queries: Iterable[ValidationQuery],
    run_key: str,
    tested_by: str,
    notify: Callable[[Alert], object],
    dag_id: str | None = None,
    run_id: str | None = None,
    workers: int = 2,
    rng: random.Random | None = None,
) -> DrillResult:
    """Choose, restore, check, record; alert when the drill fails. ``storages`` are the targets by name."""
    rng = rng or random.Random()
    row = choose_backup(cat, request, rng)
    backup_id = row["backup_id"]
    order = [request.from_target] if request.from_target else list(storages)
    copies, damaged = healthy_copies(cat, backup_id, order)
    result = DrillResult(backup_id, skipped_copies=damaged)
    for name, why in damaged.items():
        log.warning("Drill skips the %s copy of %s: the catalog marks it damaged (%s)", name, backup_id, why)
    until = request.until
    queries = list(queries)
    for name in copies:
        storage = storages[name]
        try:
            manifest = read_manifest(storage, backup_id)
            if request.trigger == "weekly" and until is None:
                until = random_moment(committed_manifests(storage), manifest, rng)
            log.info("Drilling %s from %s%s", backup_id, name, f" at {until.isoformat()}" if until else "")
            if drill_copy(
                result,
                manifest,
                storage,
                keyring,
                server,
                scratch=scratch_name(run_key),
                queries=queries,
                until=until,
                workers=workers,
            ):
                break
        except COPY_FAULTS as e:
            result.copy_faults[name] = str(e)
    if result.from_target is None:
        result.problems.insert(0, "no copy of the backup could be restored")
        result.data_loss_detected = True
    result.passed = not result.problems
    record_test(
        cat,
        BackupTest(
            backup_id=backup_id,
            test_type="restore_test",
            success=result.passed,
            test_environment=f"scratch database {scratch_name(run_key)} on {server.label} "
            f"({server.host}:{server.port}), dropped after the drill",
            tested_by=tested_by,
            errors_found=result.problems + [f"copy {t}: {e}" for t, e in result.copy_faults.items()],
            data_samples_verified=result.rows_checked,
            duration_seconds=result.rto_seconds,
            data_loss_detected=result.data_loss_detected,
            notes=result.notes,
            details={
                "trigger": request.trigger,
                "from_target": result.from_target,
                "point_in_time": result.point_in_time,
                "rto_seconds": result.rto_seconds,
                "group_usable_seconds": result.group_usable_seconds,
                "validation": result.validation,
                "tables_checked": result.tables_checked,
                "files_checked": result.files_checked,
                "skipped_copies": result.skipped_copies,
            },
            dag_id=dag_id,
            run_id=run_id,
        ),
    )
    if result.passed:
        log.info("Drill of %s PASSED: %s", backup_id, result.notes)
    else:
        log.error("Drill of %s FAILED: %s", backup_id, "; ".join(result.problems))
        notify(
            alerts.drill_failed(
                backup_id=backup_id,
                problems=result.problems + [f"copy {t}: {e}" for t, e in result.copy_faults.items()],
                from_target=result.from_target,
                dag_run=f"{dag_id} {run_id}" if dag_id else run_key,
            )
        )
    return result
