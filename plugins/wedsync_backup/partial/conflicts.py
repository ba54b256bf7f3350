"""Conflicts: a partial restore that cannot be carried out whole is refused with one error naming the table,
the key and, for a wedding, the other wedding that holds it now. Nothing is changed.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from wedsync_backup.errors import RestoreError
from wedsync_backup.partial.changes import TableWork
from wedsync_backup.partial.stage import temp
from wedsync_backup.weddings.slice import WEDDING_ID, SliceTable, WeddingSlice


def unique_clash(
    conn: psycopg.Connection, work: TableWork
) -> tuple[tuple[str, ...], tuple[Any, ...], tuple[Any, ...]] | None:
    """The first backup row whose unique key (primary key included) a live row outside the scope holds, as
    (columns, values, that row's primary key); None when every unique key stays unique (and at once when the
    restore writes no row of the table)."""
    live = work.live
    if not work.writes:
        return None
    if work.keyed:
        outside = sql.SQL("NOT EXISTS (SELECT 1 FROM ({}) l WHERE {})").format(work.current, work.key_match("l", "t"))
        other = live.cols("t", live.key)
    else:
        outside = sql.SQL("{} NOT IN (SELECT {} FROM ({}) l)").format(
            work.row_text("t"), work.row_text("l"), work.current
        )
        other = sql.SQL("NULL")
    for unique in live.uniques:
        if not set(unique) <= set(work.columns):
            continue
        match = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier("t", c), sql.Identifier("s", c)) for c in unique
        )
        row = conn.execute(
            sql.SQL("SELECT {}, {} FROM {} s JOIN {} t ON {} WHERE {} LIMIT 1").format(
                live.cols("s", unique), other, temp(work.staged), live.ident, match, outside
            )
        ).fetchone()
        if row is not None:
            return unique, tuple(row[: len(unique)]), tuple(row[len(unique) :])
    return None


def owner_of(conn: psycopg.Connection, live_slice: WeddingSlice, table: SliceTable, key: tuple[Any, ...]) -> str | None:
    """The wedding a live row (by primary key) belongs to, or None when it belongs to none."""
    if not table.key:
        return None
    every = [
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT {}::text FROM {}").format(sql.Identifier(live_slice.policy.key), live_slice.root.ident)
        ).fetchall()
    ]
    match = sql.SQL(" AND ").join(
        sql.SQL("m.{} = %(k{})s").format(sql.Identifier(c), sql.SQL(str(i))) for i, c in enumerate(table.key)
    )
    params: dict[str, Any] = {"wedding_ids": every, **{f"k{i}": v for i, v in enumerate(key)}}
    row = conn.execute(
        sql.SQL("SELECT m.{} FROM ({}) m WHERE {} LIMIT 1").format(
            sql.Identifier(WEDDING_ID), table.member_rows_sql(with_wedding_id=True), match
        ),
        params,
    ).fetchone()
    return None if row is None else str(row[0])


def clash_error(
    what: str, work: TableWork, columns: tuple[str, ...], values: tuple[Any, ...], holder: str
) -> RestoreError:
    shown = ", ".join(f"{c}={v}" for c, v in zip(columns, values, strict=True))
    return RestoreError(
        f"Restoring {what} conflicts on table {work.live.display}: key ({shown}) is now used by {holder}",
        "the backup's row and that live row would share a key that must stay unique; nothing was changed",
        "move or delete the other row first (or restore fewer data_types), then run the restore again",
    )


def constraint_error(what: str, e: psycopg.IntegrityError) -> RestoreError:
    """A constraint the restored rows would break (a missing parent, a check): the table and the key."""
    d = e.diag
    table = f"{d.schema_name}.{d.table_name}" if d.table_name else "a table in scope"
    return RestoreError(
        f"Restoring {what} would break constraint {d.constraint_name or '?'} on table {table}",
        f"{d.message_primary}{'; ' + d.message_detail if d.message_detail else ''}; nothing was changed",
        "a missing parent the backup cannot supply, or a row of another wedding still pointing at a row the "
        "backup lacks: fix that row (or restore its wedding too), then run the restore again",
    )
