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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from wedsync_backup.commands.resources import Resources, RunRef
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError
from wedsync_backup.manifest import RestoreScope
from wedsync_backup.partial.changes import (
    TableWork,
    count_changes,
    delete_rows,
    disable_user_triggers,
    insert_missing,
    insert_rows,
    restore_triggers,
    update_rows,
)
from wedsync_backup.partial.conflicts import clash_error, constraint_error, owner_of, unique_clash
from wedsync_backup.partial.request import SELECTIVE, WEDDING_ONLY, as_names
from wedsync_backup.partial.shape import LiveTable, fk_order, read_live_table
from wedsync_backup.partial.snapshot import SnapshotTable, take_safety_snapshot
from wedsync_backup.partial.source import BackupRows, backup_database, check_snapshot_fits, choose_rows
from wedsync_backup.partial.stage import Staging, temp
from wedsync_backup.pitr import bump_sequences_in
from wedsync_backup.policy import Policy
from wedsync_backup.weddings.export import read_wedding_slice
from wedsync_backup.weddings.policy import table_name
from wedsync_backup.weddings.slice import SliceTable, WeddingSlice, discover_slice

if TYPE_CHECKING:
    from wedsync_backup.commands.restore import RestoreRequest

log = logging.getLogger(__name__)
LOCK_TIMEOUT = "30s"  # an application holding a table longer makes the restore fail (and retry), never hang


@dataclass
class Member:
    """A table in scope (or a parent), with the SQL reading its rows in scope from the live database."""

    live: LiveTable
    rows: sql.Composable  # SELECT ... of the live rows in scope (bound with %(wedding_ids)s)
    part_of: SliceTable | None = None  # wedding-only: the live slice's table


@dataclass
class Scope:
    kind: str
    tables: list[Member]  # referenced before referencing
    parents: list[Member] = field(default_factory=list)  # inserted where missing, in that order
    wedding_ids: list[str] = field(default_factory=list)
    data_types: list[str] = field(default_factory=list)
    live_slice: WeddingSlice | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"wedding_ids": self.wedding_ids}

    def describe(self) -> str:
        if self.kind == WEDDING_ONLY:
            return f"wedding{'s' if len(self.wedding_ids) > 1 else ''} {', '.join(self.wedding_ids)}"
        return f"table{'s' if len(self.tables) > 1 else ''} {', '.join(m.live.display for m in self.tables)}"


def _whole(live: LiveTable) -> sql.Composed:
    return sql.SQL("SELECT * FROM {}{}").format(sql.SQL("" if live.kind == "p" else "ONLY "), live.ident)


def _selective_scope(conn: psycopg.Connection, names: list[str], label: str) -> Scope:
    tables = []
    for text in names:
        schema, name = table_name(text, "tables")
        live = read_live_table(conn, schema, name)
        if live is None:
            raise ConfigError(
                f"Table {text} does not exist in the restore target {label}",
                "selective restores replace (or copy beside) tables the target has",
                'name existing tables as schema.table (quote names that need it: \'"Wed Data"."Guests"\')',
            )
        tables.append(live)
    return Scope(SELECTIVE, [Member(t, _whole(t)) for t in fk_order(conn, tables)])


def _wedding_scope(conn: psycopg.Connection, policy: Policy, ids: list[str], types: list[str], label: str) -> Scope:
    root = policy.weddings.table
    if read_live_table(conn, *root) is None:
        raise ConfigError(
            f"The restore target {label} has no wedding table {root[0]}.{root[1]}",
            "a wedding-only restore brings rows back into a database with the platform's schema",
            "point target_conn_id at the live database (or one with its schema), or fix weddings.table",
        )
    live_slice = discover_slice(conn, policy.weddings)
    chosen = live_slice.tables_for(types or None)

    def member(t: SliceTable, rows: sql.Composable) -> Member:
        live = read_live_table(conn, t.schema, t.name)
        assert live is not None
        return Member(live, rows, t)

    parents = [member(t, t.referenced_rows_sql()) for t in live_slice.parents]
    if live_slice.root not in chosen:  # the wedding row itself is a parent of the rows restored
        parents.append(member(live_slice.root, live_slice.root.member_rows_sql()))
    tables = [member(t, t.member_rows_sql()) for t in chosen]
    return Scope(WEDDING_ONLY, tables, parents, ids, types, live_slice)


def _scope(conn: psycopg.Connection, policy: Policy, req: RestoreRequest, label: str) -> Scope:
    if req.scope == SELECTIVE:
        return _selective_scope(conn, as_names(req.tables), label)
    return _wedding_scope(conn, policy, as_names(req.wedding_ids), as_names(req.data_types), label)


def _check_side_schema(conn: psycopg.Connection, into: str, label: str) -> None:
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (into,)).fetchone():
        raise ConfigError(
            f"into_schema '{into}' already exists in the restore target {label}",
            "a selective restore loads into a NEW schema, so that nothing there is overwritten",
            "choose a schema name that does not exist yet (or drop the old one after inspecting it)",
        )


# --- staging -----------------------------------------------------------------------------------------------
def _known_weddings(conn: psycopg.Connection, scope: Scope, ids: list[str]) -> set[str]:
    assert scope.live_slice is not None
    key, root = scope.live_slice.policy.key, scope.live_slice.root.ident
    rows = conn.execute(
        sql.SQL("SELECT {}::text FROM {} WHERE {}::text = ANY(%s)").format(
            sql.Identifier(key), root, sql.Identifier(key)
        ),
        (ids,),
    ).fetchall()
    return {r[0] for r in rows}


def _refuse_unknown(
    scope: Scope, live: psycopg.Connection, backup: psycopg.Connection | None, rows: BackupRows
) -> None:
    """Every wedding named must exist now or in the backup: an unknown id is refused before anything is touched."""
    if scope.kind != WEDDING_ONLY:
        return
    known = _known_weddings(live, scope, scope.wedding_ids)
    if backup is not None:
        known |= _known_weddings(backup, scope, scope.wedding_ids)
    known |= rows.holds()
    unknown = [w for w in scope.wedding_ids if w not in known]
    if unknown:
        raise ConfigError(
            f"Unknown wedding id{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
            f"neither the restore target nor backup {rows.manifest.backup_id} holds "
            f"{'them' if len(unknown) > 1 else 'it'}",
            "check the ids (the weddings table's key), or pick a backup from when they existed",
        )


def _backup_table(backup: psycopg.Connection, scope: Scope, m: Member) -> tuple[tuple[str, ...], sql.Composable] | None:
    """(columns, SQL) of a table's rows in scope in the restored backup; None when the backup lacks the table."""
    if scope.kind == WEDDING_ONLY:
        assert m.part_of is not None and scope.live_slice is not None
        try:
            theirs = discover_slice(backup, scope.live_slice.policy).table(m.live.schema, m.live.name)
        except ConfigError:
            return None
        sql_rows = theirs.referenced_rows_sql() if theirs.membership == "parent" else theirs.member_rows_sql()
        return tuple(c for c in theirs.columns if c not in theirs.generated_columns), sql_rows
    shape = read_live_table(backup, m.live.schema, m.live.name)
    return None if shape is None else (shape.columns, _whole(shape))


def _stage(
    staging: Staging,
    scope: Scope,
    members: list[Member],
    rows: BackupRows,
    backup: psycopg.Connection | None,
    keyring: Keyring,
) -> list[TableWork]:
    """The backup's rows of ``members`` into staging tables; returns one TableWork each (live rows not yet read)."""
    works = []
    for m in members:
        columns: tuple[str, ...] = m.live.columns
        if backup is not None:
            found = _backup_table(backup, scope, m)
            if found is not None:
                columns = tuple(c for c in m.live.columns if c in found[0])
            staged = staging.empty_like(m.live, columns)
            if found is not None:
                staging.load_query(staged, columns, backup, found[1], scope.params)
        else:
            entry = rows.entry(m.live.schema, m.live.name)
            if entry is not None and not set(entry.columns) <= set(m.live.columns):
                raise ConfigError(
                    f"Table {m.live.display} has changed since safety snapshot {rows.manifest.backup_id}",
                    f"the snapshot holds columns {', '.join(entry.columns)}; the table has {', '.join(m.live.columns)}",
                    "restore it into a side schema (scope selective with into_schema) and merge by hand",
                )
            if entry is not None:
                columns = tuple(entry.columns)
            staged = staging.empty_like(m.live, columns)
            if entry is not None:
                held = rows.scope.wedding_ids
                parts = (
                    [entry.parts[held.index(w)] for w in scope.wedding_ids]
                    if scope.kind == WEDDING_ONLY
                    else entry.parts
                )
                staging.load_parts(staged, entry, parts, rows.storage, keyring, rows.manifest.backup_id)
        staging.index(staged, m.live.key if set(m.live.key) <= set(columns) else ())
        works.append(TableWork(m.live, columns, staged, ""))
    return works


def _stage_wedding_backup(
    staging: Staging, scope: Scope, rows: BackupRows, keyring: Keyring
) -> tuple[list[TableWork], list[TableWork]]:
    """Each wedding's object of a wedding backup, read alone, section by section into the stage."""
    assert rows.weddings is not None
    members = {m.live.qualified: m for m in [*scope.tables, *scope.parents]}
    staged: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
    for wedding in scope.wedding_ids:
        for section in read_wedding_slice(
            rows.storage, keyring, rows.weddings.backup_id, wedding, manifest=rows.weddings
        ):
            m = members.get((section.schema, section.name))
            if m is None:
                continue  # outside the data types asked for: its lines are skipped unread
            columns = tuple(section.columns)
            if (section.schema, section.name) not in staged:
                if not set(columns) <= set(m.live.columns):
                    raise ConfigError(
                        f"Table {m.live.display} has changed since wedding backup {rows.weddings.backup_id}",
                        f"the backup holds columns {', '.join(columns)}; the table has {', '.join(m.live.columns)}",
                        "restore from a newer backup, or with mode point_in_time",
                    )
                staged[(section.schema, section.name)] = (staging.empty_like(m.live, columns), columns)
            staging.load_lines(staged[(section.schema, section.name)][0], columns, section.lines)

    def work(m: Member) -> TableWork:
        name, columns = staged.get(m.live.qualified) or (staging.empty_like(m.live, m.live.columns), m.live.columns)
        staging.index(name, m.live.key if set(m.live.key) <= set(columns) else ())
        return TableWork(m.live, columns, name, "")

    return [work(m) for m in scope.tables], [work(m) for m in scope.parents]


# --- compare, then replace in one transaction ------------------------------------------------------------
def _compare(staging: Staging, scope: Scope, works: list[TableWork]) -> None:
    """Read the live rows in scope (inside the open transaction), count the changes, refuse a clash."""
    conn = staging.conn
    for i, (m, w) in enumerate(zip(scope.tables, works, strict=True)):
        w.current = staging.snapshot(m.rows, scope.params, w.columns)
        staging.index(w.current, m.live.key if w.keyed else ())
        count_changes(conn, w, f"_ws_a{i}")
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
    then the safety snapshot of what is being replaced, then sequences; the caller commits."""
    saved = disable_user_triggers(conn, [w.live for w in [*parents, *works]])
    try:
        inserted = {p.live.display: insert_missing(conn, p) for p in parents}
        for w in reversed(works):
            delete_rows(conn, w)
        for w in works:
            update_rows(conn, w)
            insert_rows(conn, w)
    except psycopg.errors.IntegrityConstraintViolation as e:
        raise constraint_error(scope.describe(), e) from e
    snapshot_id = snapshot()  # the live rows as committed: exactly what this transaction replaces
    names = [sql.Identifier(*w.live.qualified).as_string(conn) for w in [*parents, *works]]
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
    policy = res.policy
    target = req.destination(res)
    storage = res.storage(req.from_target)
    ring = res.keyring()
    ids = as_names(req.wedding_ids) if req.scope == WEDDING_ONLY else None
    rows = choose_rows(req.mode, req.backup_id, req.until(), storage, ring, ids)
    into = None if req.into_schema in (None, "", "None") else str(req.into_schema)
    with target.connect(autocommit=False) as conn:
        scope = _scope(conn, policy, req, target.label)
        check_snapshot_fits(rows, req.scope, scope.wedding_ids, [m.live.qualified for m in scope.tables])
        if into:
            _check_side_schema(conn, into, target.label)
        conn.commit()
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
        with backup_database(rows, ring, target, f"partial|{run.dag_id}|{run.run_id}", policy.export_workers) as backup:
            _refuse_unknown(scope, conn, backup, rows)
            if rows.weddings is not None:
                works, parents = _stage_wedding_backup(staging, scope, rows, ring)
            else:
                works = _stage(staging, scope, scope.tables, rows, backup, ring)
                parents = _stage(staging, scope, scope.parents, rows, backup, ring) if backup is not None else []
        conn.commit()
        result["business_impact_level"] = _impact(conn, scope, works, parents, into)
        result["affected_users_count"] = _users(conn, parents)
        if into:
            _load_side_schema(conn, into, works)
            result["tables"] = {w.live.display: w.counts for w in works}
            if apply:
                conn.commit()
            return result
        if apply:
            _lock(conn, [w.live for w in [*parents, *works]])
        _compare(staging, scope, works)
        result["tables"] = {w.live.display: w.counts for w in works}
        result["rows_changed"] = sum(sum(w.counts.values()) for w in works)
        if not apply or not result["rows_changed"]:
            conn.rollback()
            return result
        snapshot_tables = [
            SnapshotTable(
                w.live,
                w.columns,
                tuple((m.rows, {"wedding_ids": [i]}) for i in scope.wedding_ids)
                if scope.kind == WEDDING_ONLY
                else ((m.rows, None),),
            )
            for m, w in zip(scope.tables, works, strict=True)
        ]
        section = RestoreScope(req.scope, scope.wedding_ids, scope.data_types)
        inserted, snapshot_id = _replace(
            conn,
            scope,
            works,
            parents,
            lambda: take_safety_snapshot(
                res, run, target, snapshot_tables, section, f"before restoring {scope.describe()}: {req.reason}"
            ),
        )
        conn.commit()
    result["parents_inserted"] = inserted
    result["safety_snapshot_id"] = snapshot_id
    log.info("Partial restore of %s complete: %s", scope.describe(), result["tables"])
    return result
