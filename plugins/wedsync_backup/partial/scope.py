"""The scope of a partial restore on the live database: which tables (and parent tables), in which order,
and the SQL that reads their rows in scope. Every mistake is a ConfigError naming what to fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from wedsync_backup.errors import ConfigError
from wedsync_backup.partial.request import SELECTIVE, WEDDING_ONLY
from wedsync_backup.partial.shape import LiveTable, fk_order, read_live_table, read_live_tables
from wedsync_backup.policy import Policy
from wedsync_backup.weddings.policy import table_name
from wedsync_backup.weddings.slice import SliceTable, WeddingSlice, discover_slice


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


def whole_table(live: LiveTable) -> sql.Composed:
    return sql.SQL("SELECT * FROM {}{}").format(sql.SQL("" if live.kind == "p" else "ONLY "), live.ident)


def selective_scope(conn: psycopg.Connection, names: list[str], label: str) -> Scope:
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
    return Scope(SELECTIVE, [Member(t, whole_table(t)) for t in fk_order(conn, tables)])


def wedding_scope(conn: psycopg.Connection, policy: Policy, ids: list[str], types: list[str], label: str) -> Scope:
    root = policy.weddings.table
    if read_live_table(conn, *root) is None:
        raise ConfigError(
            f"The restore target {label} has no wedding table {root[0]}.{root[1]}",
            "a wedding-only restore brings rows back into a database with the platform's schema",
            "point target_conn_id at the live database (or one with its schema), or fix weddings.table",
        )
    live_slice = discover_slice(conn, policy.weddings)
    chosen = live_slice.tables_for(types or None)
    shapes = read_live_tables(conn, [t.qualified for t in (*live_slice.parents, *live_slice.tables)])

    def member(t: SliceTable, rows: sql.Composable) -> Member:
        return Member(shapes[t.qualified], rows, t)

    parents = [member(t, t.referenced_rows_sql()) for t in live_slice.parents]
    if live_slice.root not in chosen:  # the wedding row itself is a parent of the rows restored
        parents.append(member(live_slice.root, live_slice.root.member_rows_sql()))
    tables = [member(t, t.member_rows_sql()) for t in chosen]
    return Scope(WEDDING_ONLY, tables, parents, ids, types, live_slice)


def check_side_schema(conn: psycopg.Connection, into: str, label: str) -> None:
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (into,)).fetchone():
        raise ConfigError(
            f"into_schema '{into}' already exists in the restore target {label}",
            "a selective restore loads into a NEW schema, so that nothing there is overwritten",
            "choose a schema name that does not exist yet (or drop the old one after inspecting it)",
        )
