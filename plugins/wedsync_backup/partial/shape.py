"""What a partial restore must know of a live table: the columns it writes, how rows are matched, what
must stay unique, and whether other rows point at it (then its rows are updated in place, never re-inserted).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from wedsync_backup.weddings.slice import _q as sql_name

QName = tuple[str, str]


@dataclass(frozen=True)
class LiveTable:
    schema: str
    name: str
    kind: str  # r (plain or partition leaf) or p (partitioned)
    columns: tuple[str, ...]  # what a restore writes: every column but generated ones, in table order
    key: tuple[str, ...]  # primary key; () when there is none (rows are then matched whole)
    identity_always: frozenset[str]
    referenced: bool  # a foreign key of another row may point at its rows
    uniques: tuple[tuple[str, ...], ...]  # unique indexes on plain columns without a predicate (key first)
    indexed: tuple[str, ...]  # leading columns of its btree indexes: lookup hints for key-less matching

    @property
    def qualified(self) -> QName:
        return (self.schema, self.name)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(*self.qualified)

    @property
    def display(self) -> str:
        """schema.table, quoted where SQL needs it (for messages), as a wedding slice's tables say it."""
        return ".".join(map(sql_name, self.qualified))

    def cols(self, alias: str | None = None, columns: Iterable[str] | None = None) -> sql.Composed:
        names = self.columns if columns is None else tuple(columns)
        return sql.SQL(", ").join(sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in names)


def read_live_table(conn: psycopg.Connection, schema: str, name: str) -> LiveTable | None:
    """The table ``schema.name`` as the target has it now (None: it does not exist there)."""
    return read_live_tables(conn, [(schema, name)]).get((schema, name))


def read_live_tables(conn: psycopg.Connection, names: Iterable[QName]) -> dict[QName, LiveTable]:
    """The tables ``names`` as the target has them now, in one round trip; those it lacks are left out."""
    wanted = list(names)
    rows = conn.execute(
        """
        SELECT n.nspname::text, c.relname::text, c.relkind::text,
          ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped
                AND attgenerated = '' ORDER BY attnum),
          ARRAY(SELECT a.attname::text FROM pg_constraint p
                  JOIN LATERAL unnest(p.conkey) WITH ORDINALITY u(n, i) ON true
                  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.n
                 WHERE p.conrelid = c.oid AND p.contype = 'p' ORDER BY u.i),
          ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped
                AND attidentity = 'a'),
          EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f'
                   AND f.confrelid IN (SELECT c.oid UNION ALL SELECT inhparent FROM pg_inherits WHERE inhrelid = c.oid
                                       UNION ALL SELECT inhrelid FROM pg_inherits WHERE inhparent = c.oid)),
          ARRAY(SELECT array_to_string(ARRAY(SELECT quote_ident(a.attname) FROM unnest(i.indkey) WITH ORDINALITY u(n, o)
                                             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.n ORDER BY u.o),
                                       ',')
                  FROM pg_index i
                 WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL AND 0 <> ALL(i.indkey)
                 ORDER BY i.indisprimary DESC, i.indexrelid),
          ARRAY(SELECT DISTINCT a.attname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                  JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                 WHERE i.indrelid = c.oid)
          FROM unnest(%s::text[], %s::text[]) AS w(schema, name)
          JOIN pg_namespace n ON n.nspname = w.schema
          JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name AND c.relkind IN ('r', 'p')
        """,
        ([q[0] for q in wanted], [q[1] for q in wanted]),
    ).fetchall()
    found = {}
    for schema, name, kind, columns, key, always, referenced, uniques, indexed in rows:
        found[(schema, name)] = LiveTable(
            schema=schema,
            name=name,
            kind=kind,
            columns=tuple(columns),
            key=tuple(key),
            identity_always=frozenset(always),
            referenced=bool(referenced),
            uniques=tuple(tuple(_unquote(c) for c in u.split(",")) for u in uniques),
            indexed=tuple(indexed),
        )
    return found


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def fk_order(conn: psycopg.Connection, tables: list[LiveTable]) -> list[LiveTable]:
    """``tables`` with every referenced table before the tables referencing it (a cycle keeps list order)."""
    oids = {
        t.qualified: conn.execute(
            "SELECT %s::regclass::oid", (sql.Identifier(*t.qualified).as_string(conn),)
        ).fetchone()[0]
        for t in tables
    }
    edges = conn.execute(
        "SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f' AND conrelid = ANY(%(o)s) "
        "AND confrelid = ANY(%(o)s) AND conrelid <> confrelid",
        {"o": list(oids.values())},
    ).fetchall()
    by_oid = {oid: q for q, oid in oids.items()}
    needs: dict[QName, set[QName]] = {t.qualified: set() for t in tables}
    for child, parent in edges:
        needs[by_oid[child]].add(by_oid[parent])
    done: list[LiveTable] = []
    left = list(tables)
    while left:
        placed = {t.qualified for t in done}
        pick = next((t for t in left if needs[t.qualified] <= placed), left[0])
        done.append(pick)
        left.remove(pick)
    return done
