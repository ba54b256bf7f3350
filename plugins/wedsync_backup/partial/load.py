"""Loading the backup's rows of a scope into the stage: from the full backup (+ chain) restored in a scratch
database, from a wedding backup's objects, or from a safety snapshot's parts; and refusing wedding ids that
neither the target nor the backup holds."""

from __future__ import annotations

import psycopg
from psycopg import sql

from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError
from wedsync_backup.partial.changes import TableWork
from wedsync_backup.partial.request import WEDDING_ONLY
from wedsync_backup.partial.scope import Member, Scope, whole_table
from wedsync_backup.partial.shape import read_live_table
from wedsync_backup.partial.source import BackupRows
from wedsync_backup.partial.stage import Staging
from wedsync_backup.weddings.slice import discover_slice


def _known_weddings(conn: psycopg.Connection, scope: Scope, ids: list[str]) -> set[str]:
    """The ids among ``ids`` that the wedding table holds, looked up by its key's index (an id that is no value
    of the key's type is compared as text instead, which reads the whole table: it is about to be refused)."""
    assert scope.live_slice is not None
    key, root = sql.Identifier(scope.live_slice.policy.key), scope.live_slice.root.ident
    typed = sql.SQL("SELECT {}::text FROM {} WHERE {} = ANY(CAST(%s AS {}[]))").format(
        key, root, key, sql.SQL(scope.live_slice.wedding_id_type)
    )
    try:
        with conn.transaction():  # a savepoint: the cast may fail
            return {r[0] for r in conn.execute(typed, (ids,)).fetchall()}
    except (psycopg.DataError, psycopg.ProgrammingError):  # not a value of that type (or not that type there)
        pass
    text = sql.SQL("SELECT {}::text FROM {} WHERE {}::text = ANY(%s)").format(key, root, key)
    return {r[0] for r in conn.execute(text, (ids,)).fetchall()}


def refuse_unknown(scope: Scope, live: psycopg.Connection, backup: psycopg.Connection | None, rows: BackupRows) -> None:
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
    return None if shape is None else (shape.columns, whole_table(shape))


def stage_rows(
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
                staging.load_parts(staged, entry, entry.parts, rows.storage, keyring, rows.manifest.backup_id)
        staging.index(staged, m.live.key if set(m.live.key) <= set(columns) else ())
        works.append(TableWork(m.live, columns, staged, ""))
    return works


def stage_wedding_backup(
    staging: Staging, scope: Scope, rows: BackupRows, keyring: Keyring
) -> tuple[list[TableWork], list[TableWork]]:
    """Each wedding's object of a wedding backup, read alone, section by section into the stage."""
    members = {m.live.qualified: m for m in [*scope.tables, *scope.parents]}
    staged: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
    for wedding in scope.wedding_ids:
        for section in rows.sections(keyring, wedding):
            m = members.get((section.schema, section.name))
            if m is None:
                continue  # outside the data types asked for: its lines are skipped unread
            columns = tuple(section.columns)
            if (section.schema, section.name) not in staged:
                if not set(columns) <= set(m.live.columns):
                    raise ConfigError(
                        f"Table {m.live.display} has changed since backup {rows.manifest.backup_id}",
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
