"""The partial restore command (emergency_restore's ``wedding-only`` and ``selective`` scopes): chosen weddings
or chosen tables brought back INTO A LIVE DATABASE, everything else left as it is.

check (the plan task): every parameter, the backup (MACs, objects), the scope on the target (its tables, the
wedding table); a dry run also stages the backup's rows and reports per table the rows to delete, insert and
update, and any conflict. apply (the restore task): stage -> one transaction that locks the tables in scope,
replaces the rows (user triggers off, constraints on) -> safety snapshot of the rows replaced (a verified
pre_restore backup) -> sequences ahead -> commit. Any failure before the commit leaves the target as it was.
With ``into_schema`` the tables are loaded into that new schema instead, and the live tables are untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from wedsync_backup.commands.resources import Resources, RunRef
from wedsync_backup.manifest import RestoreScope
from wedsync_backup.partial.changes import (
    TableWork,
    count_changes,
    delete_rows,
    diff_query,
    disable_user_triggers,
    insert_missing,
    insert_rows,
    restore_triggers,
    update_rows,
)
from wedsync_backup.partial.conflicts import clash_error, constraint_error, owner_of, unique_clash
from wedsync_backup.partial.load import refuse_unknown, stage_rows, stage_wedding_backup
from wedsync_backup.partial.request import SELECTIVE, WEDDING_ONLY, as_names
from wedsync_backup.partial.scope import Member, Scope, check_side_schema, selective_scope, wedding_scope
from wedsync_backup.partial.shape import LiveTable
from wedsync_backup.partial.snapshot import SnapshotTable, take_safety_snapshot
from wedsync_backup.partial.source import backup_database, check_snapshot_fits, choose_rows
from wedsync_backup.partial.stage import Staging, bind, temp
from wedsync_backup.pitr import bump_sequences_in
from wedsync_backup.policy import Policy

if TYPE_CHECKING:
    from wedsync_backup.commands.restore import RestoreRequest

log = logging.getLogger(__name__)
LOCK_TIMEOUT = "30s"  # an application holding a table longer makes the restore fail (and retry), never hang


def _scope(conn: psycopg.Connection, policy: Policy, req: RestoreRequest, label: str) -> Scope:
    if req.scope == SELECTIVE:
        return selective_scope(conn, as_names(req.tables), label)
    return wedding_scope(conn, policy, as_names(req.wedding_ids), as_names(req.data_types), label)


# --- compare, then replace in one transaction ------------------------------------------------------------
def _in_scope(m: Member, w: TableWork) -> sql.Composable:
    """The live rows a restore replaces: the wedding's, and the rows with a key the backup holds that belong to
    no wedding now (a delete of the wedding SET its wedding_id NULL: they are re-attached, not a conflict)."""
    t = m.part_of
    if t is None or t.membership != "direct" or not w.keyed:
        return m.rows
    return sql.SQL("{} UNION ALL SELECT t.* FROM {}{} t WHERE ({}) IN (SELECT {} FROM {}) AND {}").format(
        m.rows,
        sql.SQL("" if m.live.kind == "p" else "ONLY "),
        m.live.ident,
        m.live.cols("t", m.live.key),
        m.live.cols(None, m.live.key),
        temp(w.staged),
        sql.SQL(" AND ").join(sql.SQL("{} IS NULL").format(sql.Identifier("t", c)) for c in t.direct_columns),
    )


def _compare(staging: Staging, scope: Scope, works: list[TableWork], parents: list[TableWork]) -> None:
    """Compare the live rows in scope (inside the open transaction) with the backup's: count the changes
    (all tables in one statement), stage the changes of the tables that change, refuse a clash."""
    conn = staging.conn
    for m, w in zip(scope.tables, works, strict=True):
        select = sql.SQL("SELECT {} FROM ({}) m").format(m.live.cols(None, w.columns), _in_scope(m, w))
        w.current = sql.SQL(bind(conn, select, scope.params))
    count_changes(conn, works, parents)
    for w in works:
        if w.keyed and w.changed:
            w.actions = staging.actions(diff_query(w), w.live.key)
    for m, w in zip(scope.tables, works, strict=True):
        clash = unique_clash(conn, w)
        if clash is None:
            continue
        columns, values, other = clash
        holder = "a live row outside this restore"
        if scope.live_slice is not None and m.part_of is not None and other and other[0] is not None:
            wedding = owner_of(conn, scope.live_slice, m.part_of, other)
            holder = f"wedding {wedding}" if wedding else "a row of no wedding"
        raise clash_error(scope.describe(), w, columns, values, holder)


def _lock(conn: psycopg.Connection, tables: list[LiveTable]) -> None:
    """Writers of the tables in scope wait until the commit: the rows read, saved and replaced stay the same."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
    conn.execute(
        sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.SQL(", ").join(t.ident for t in tables))
    )


def _replace(
    conn: psycopg.Connection,
    scope: Scope,
    works: list[TableWork],
    parents: list[TableWork],
    snapshot: Callable[[], str],
) -> tuple[dict[str, int], str]:
    """Parents where missing, deletes (referencing tables first), updates and inserts (referenced first),
    then the safety snapshot of what is being replaced, then sequences; the caller commits. Tables whose rows
    stay as they are are not touched (their triggers, their sequences)."""
    every = [*parents, *works]
    saved = disable_user_triggers(
        conn,
        [w.live for w in every],
        changed=[w.live for w in every if w.changed],
        deleted=[w.live for w in works if w.deletes],
    )
    try:
        inserted = {p.live.display: insert_missing(conn, p) for p in parents if p.changed}
        for w in reversed(works):
            delete_rows(conn, w)
        for w in works:
            update_rows(conn, w)
            insert_rows(conn, w)
    except psycopg.IntegrityError as e:  # class 23: foreign key, unique, check, not null (siblings in psycopg)
        raise constraint_error(scope.describe(), e) from e
    snapshot_id = snapshot()  # the live rows as committed: exactly what this transaction replaces
    names = [sql.Identifier(*w.live.qualified).as_string(conn) for w in every if w.writes]
    if names:
        bump_sequences_in(conn, tables=names)
    restore_triggers(conn, saved)
    return {k: v for k, v in inserted.items() if v}, snapshot_id


def _load_side_schema(conn: psycopg.Connection, into: str, works: list[TableWork]) -> None:
    """The staged tables as new tables of the new schema ``into`` (shape, defaults, checks, indexes)."""
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(into)))
    for w in works:
        side = sql.Identifier(into, w.live.name)
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(side, w.live.ident))
        cur = conn.execute(
            sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
                side, w.live.cols(None, w.columns), w.live.cols(None, w.columns), temp(w.staged)
            )
        )
        w.counts = {"delete": 0, "insert": cur.rowcount, "update": 0}


# --- what the event records --------------------------------------------------------------------------------
def _impact(
    conn: psycopg.Connection, scope: Scope, works: list[TableWork], parents: list[TableWork], into: str | None
) -> str:
    """low: a side schema; high: live tables, or a wedding within its proximity days; else medium."""
    if scope.kind == SELECTIVE:
        return "low" if into else "high"
    assert scope.live_slice is not None
    root = next((w for w in [*works, *parents] if w.live.qualified == scope.live_slice.root.qualified), None)
    column = scope.live_slice.policy.date_column
    if root is None or column not in root.columns:
        return "medium"
    nearest = conn.execute(
        sql.SQL("SELECT min(abs({}::date - current_date)) FROM {}").format(sql.Identifier(column), temp(root.staged))
    ).fetchone()[0]
    return "high" if nearest is not None and nearest <= scope.live_slice.policy.proximity_days else "medium"


def _users(conn: psycopg.Connection, parents: list[TableWork]) -> int | None:
    """The users the restored rows point at (the staged rows of a parent table named users)."""
    users = next((p for p in parents if p.live.name == "users"), None)
    if users is None:
        return None
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(temp(users.staged))).fetchone()[0])


# --- the command -------------------------------------------------------------------------------------------
def check(res: Resources, req: RestoreRequest, run: RunRef) -> dict[str, Any]:
    """The plan: every check that touches nothing; a dry run also stages and reports the changes."""
    return _run(res, req, run, stage=req.is_dry_run, apply=False)


def apply(res: Resources, req: RestoreRequest, run: RunRef) -> dict[str, Any]:
    """Restore the scope, all or nothing (idempotent: a retry stages again and replaces again)."""
    return _run(res, req, run, stage=True, apply=True)


def _run(res: Resources, req: RestoreRequest, run: RunRef, *, stage: bool, apply: bool) -> dict[str, Any]:
    """The work, and how long it took (``seconds``: the restore's own time, as the event records it)."""
    started = time.monotonic()
    result = _work(res, req, run, stage=stage, apply=apply)
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


class _Clock:
    """Where a restore's time went, step by step: its completion log line says it."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.steps: dict[str, float] = {}

    def step(self, name: str) -> None:
        now = time.monotonic()
        self.steps[name] = self.steps.get(name, 0.0) + now - self.last
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.steps.items())


def _work(res: Resources, req: RestoreRequest, run: RunRef, *, stage: bool, apply: bool) -> dict[str, Any]:
    policy = res.policy
    clock = _Clock()
    target = req.destination(res)
    storage = res.storage(req.from_target)
    ring = res.keyring()
    ids = as_names(req.wedding_ids) if req.scope == WEDDING_ONLY else None
    rows = choose_rows(req.mode, req.backup_id, req.until(), storage, ring, ids)
    into = None if req.into_schema in (None, "", "None") else str(req.into_schema)
    clock.step("backup chosen")
    with target.connect(autocommit=False) as conn:
        scope = _scope(conn, policy, req, target.label)
        check_snapshot_fits(
            rows, req.scope, scope.wedding_ids, [m.live.qualified for m in scope.tables], scope.data_types
        )
        if into:
            check_side_schema(conn, into, target.label)
        conn.commit()
        clock.step("scope")
        result: dict[str, Any] = {
            **rows.describe(),
            "scope": req.scope,
            "weddings": scope.wedding_ids,
            "data_types": scope.data_types,
            "into_schema": into,
            "dry_run": req.is_dry_run,
            "safety_snapshot_id": None,
            "target_conn_id": req.target_conn_id,
            "from_target": req.from_target,
            "data_loss_minutes": rows.data_loss_minutes(),
            "tables": {m.live.display: None for m in scope.tables},
        }
        if not stage:
            return result
        staging = Staging(conn)
        with (
            backup_database(rows, ring, target, f"partial|{run.dag_id}|{run.run_id}", policy.export_workers) as backup,
            staging.quiet(),
        ):
            refuse_unknown(scope, conn, backup, rows)
            if rows.by_wedding:
                works, parents = stage_wedding_backup(staging, scope, rows, ring)
            else:
                works = stage_rows(staging, scope, scope.tables, rows, backup, ring)
                parents = stage_rows(staging, scope, scope.parents, rows, backup, ring) if backup is not None else []
        conn.commit()
        clock.step("staged")
        result["business_impact_level"] = _impact(conn, scope, works, parents, into)
        result["affected_users_count"] = _users(conn, parents)
        if into:
            _load_side_schema(conn, into, works)
            result["tables"] = {w.live.display: w.counts for w in works}
            if apply:
                conn.commit()
            else:
                conn.rollback()  # a dry run leaves no schema behind (the connection would commit on close)
            return result
        if apply:
            _lock(conn, [w.live for w in [*parents, *works]])
        with staging.quiet():  # reads and temporary tables only: live rows are written after it
            _compare(staging, scope, works, parents)
        clock.step("compared")
        result["tables"] = {w.live.display: w.counts for w in works}
        result["rows_changed"] = sum(sum(w.counts.values()) for w in works)
        if not apply or not result["rows_changed"]:
            conn.rollback()
            return result
        wedding_only = scope.kind == WEDDING_ONLY
        by_table = (
            []
            if wedding_only
            else [SnapshotTable(w.live, w.columns, ((m.rows, None),)) for m, w in zip(scope.tables, works, strict=True)]
        )
        by_wedding = [m.part_of for m in scope.tables if m.part_of is not None] if wedding_only else []
        section = RestoreScope(req.scope, scope.wedding_ids, scope.data_types)
        why = f"before restoring {scope.describe()}: {req.reason}"

        def snapshot() -> str:
            clock.step("replaced")
            snapshot_id = take_safety_snapshot(res, run, target, by_table, section, why, wedding_tables=by_wedding)
            clock.step("safety snapshot")
            return snapshot_id

        inserted, snapshot_id = _replace(conn, scope, works, parents, snapshot)
        conn.commit()
        clock.step("sequences, triggers, commit")
    result["parents_inserted"] = inserted
    result["safety_snapshot_id"] = snapshot_id
    log.info("Partial restore of %s complete (%s): %s", scope.describe(), clock, result["tables"])
    return result
