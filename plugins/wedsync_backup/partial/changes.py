"""What replacing the live rows in scope with the backup's changes, table by table, and the one transaction
that does it.

Rows are matched by primary key: a live row the backup lacks is deleted, a backup row the live table lacks
is inserted, a row both hold with other values is updated in place (so rows elsewhere that point at it stay
valid). A table that nothing references has its changed rows deleted and inserted again instead, so that
swapped values of a unique column (two timeline events that traded places) never collide mid-statement. A
table without a primary key is compared as a multiset of whole rows and, when it differs, its rows in scope
are replaced whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from wedsync_backup.partial.shape import LiveTable
from wedsync_backup.partial.stage import temp

OPS = ("delete", "insert", "update")


@dataclass
class TableWork:
    """One table in scope: the live table, its staged backup rows and the live rows in scope."""

    live: LiveTable
    columns: tuple[str, ...]  # the columns compared and written (the live table's that the backup has)
    staged: str  # the backup's rows
    # SELECT of the live rows in scope, parameters bound: read where needed, inside the transaction that locked
    # the tables (every read comes before this table's own rows are written)
    current: sql.Composable = field(default_factory=lambda: sql.SQL(""))
    actions: str = ""  # keyed tables that change: (key..., op) of every row that changes
    # the rows to delete, insert, update; a parent table: "insert" counts the staged rows its live table lacks
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))

    @property
    def keyed(self) -> bool:
        return bool(self.live.key) and set(self.live.key) <= set(self.columns)

    def key_match(self, a: str, b: str) -> sql.Composed:
        return sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(a, k), sql.Identifier(b, k)) for k in self.live.key
        )

    def row_text(self, alias: str) -> sql.Composed:
        """The row's value as text: compares every type, json and arrays included, NULLs as equal."""
        return sql.SQL("ROW({})::text").format(self.live.cols(alias, self.columns))

    @property
    def changed(self) -> bool:
        return any(self.counts.values())

    @property
    def writes(self) -> bool:
        """Rows are written (inserted or updated): their values may draw on sequences or clash on a key."""
        return bool(self.counts["insert"] or self.counts["update"])

    @property
    def deletes(self) -> bool:
        """Live rows are deleted: a keyed table's rows the backup lacks, a changed key-less table's rows in scope.
        (A keyed table that nothing references re-inserts its updated rows, but no foreign key reaches from it.)"""
        return bool(self.counts["delete"] or (not self.keyed and self.changed))


def diff_query(work: TableWork) -> sql.Composed:
    """A keyed table's changes: (key..., op) for every row to delete, insert or update. The live rows in scope
    are read once (a materialized CTE: planned and run once, not three times)."""
    return sql.SQL(
        "WITH l AS MATERIALIZED ({cur}) "
        "SELECT {kl}, 'delete'::text AS op FROM l WHERE NOT EXISTS (SELECT 1 FROM {s} s WHERE {m}) "
        "UNION ALL SELECT {ks}, 'insert' FROM {s} s WHERE NOT EXISTS (SELECT 1 FROM l WHERE {m}) "
        "UNION ALL SELECT {kl}, 'update' FROM l JOIN {s} s ON {m} WHERE {lt} IS DISTINCT FROM {st}"
    ).format(
        kl=work.live.cols("l", work.live.key),
        ks=work.live.cols("s", work.live.key),
        cur=work.current,
        s=temp(work.staged),
        m=work.key_match("s", "l"),
        lt=work.row_text("l"),
        st=work.row_text("s"),
    )


def _count_query(i: int, work: TableWork) -> sql.Composed:
    """(i, op, rows) of one table in scope; a key-less one compared as a multiset of whole rows."""
    if work.keyed:
        return sql.SQL("SELECT {}, op, count(*) FROM ({}) d GROUP BY op").format(sql.Literal(i), diff_query(work))
    return sql.SQL(
        "SELECT * FROM (WITH l AS MATERIALIZED ({cur}) "
        "SELECT {i}, 'delete', count(*) FROM (SELECT {lt} FROM l EXCEPT ALL SELECT {st} FROM {s} s) d "
        "UNION ALL "
        "SELECT {i}, 'insert', count(*) FROM (SELECT {st} FROM {s} s EXCEPT ALL SELECT {lt} FROM l) d) c"
    ).format(i=sql.Literal(i), lt=work.row_text("l"), st=work.row_text("s"), cur=work.current, s=temp(work.staged))


def _missing_query(i: int, parent: TableWork) -> sql.Composed:
    """(i, 'insert', rows) of a parent table: its staged rows whose key the live table lacks."""
    return sql.SQL("SELECT {}, 'insert', count(*) FROM {} s WHERE NOT EXISTS (SELECT 1 FROM {} t WHERE {})").format(
        sql.Literal(i), temp(parent.staged), parent.live.ident, parent.key_match("t", "s")
    )


def count_changes(conn: psycopg.Connection, works: list[TableWork], parents: list[TableWork]) -> None:
    """Fill ``counts`` of every table in scope, and of every keyed parent, in one statement (one round trip)."""
    every = [*works, *parents]
    parts = [_count_query(i, w) for i, w in enumerate(works)]
    parts += [_missing_query(len(works) + i, p) for i, p in enumerate(parents) if p.keyed]
    for w in every:
        w.counts = dict.fromkeys(OPS, 0)
    if not parts:
        return
    for i, op, n in conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall():
        every[i].counts[op] = int(n)


# --- the transaction ---------------------------------------------------------------------------------------
def _only(live: LiveTable) -> sql.SQL:
    """Plain tables without their inheritance children (the scope never includes those); a partitioned
    table with its partitions."""
    return sql.SQL("" if live.kind == "p" else "ONLY ")


def delete_rows(conn: psycopg.Connection, work: TableWork) -> None:
    live = work.live
    if not work.changed:
        return
    if work.keyed:
        ops = ["delete"] if live.referenced else ["delete", "update"]
        conn.execute(
            sql.SQL("DELETE FROM {only}{t} t USING {a} a WHERE a.op = ANY(%s) AND {m}").format(
                only=_only(live), t=live.ident, a=temp(work.actions), m=work.key_match("t", "a")
            ),
            (ops,),
        )
        return
    # key-less: every live row equal to a row in scope goes (an indexed column narrows the search first)
    hints = [c for c in live.indexed if c in work.columns][:1]
    narrow = sql.SQL("").join(
        sql.SQL("{} IN (SELECT {} FROM ({}) l) AND ").format(
            sql.Identifier("t", c), sql.Identifier("l", c), work.current
        )
        for c in hints
    )
    conn.execute(
        sql.SQL("DELETE FROM {only}{t} t WHERE {narrow}{tt} IN (SELECT {lt} FROM ({cur}) l)").format(
            only=_only(live),
            t=live.ident,
            narrow=narrow,
            tt=work.row_text("t"),
            lt=work.row_text("l"),
            cur=work.current,
        )
    )


def update_rows(conn: psycopg.Connection, work: TableWork) -> None:
    live = work.live
    if not (work.keyed and live.referenced and work.counts["update"]):
        return
    sets = [c for c in work.columns if c not in live.key and c not in live.identity_always]
    if not sets:
        return
    conn.execute(
        sql.SQL("UPDATE {only}{t} t SET {sets} FROM {s} s JOIN {a} a ON {sa} WHERE a.op = 'update' AND {ts}").format(
            only=_only(live),
            t=live.ident,
            sets=sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("s", c)) for c in sets),
            s=temp(work.staged),
            a=temp(work.actions),
            sa=work.key_match("s", "a"),
            ts=work.key_match("t", "s"),
        )
    )


def insert_rows(conn: psycopg.Connection, work: TableWork) -> None:
    live = work.live
    if not work.changed:
        return
    cols = live.cols(None, work.columns)
    if work.keyed:
        ops = ["insert"] if live.referenced else ["insert", "update"]
        source = sql.SQL("SELECT {} FROM {} s JOIN {} a ON {} WHERE a.op = ANY(%s)").format(
            live.cols("s", work.columns), temp(work.staged), temp(work.actions), work.key_match("s", "a")
        )
        params: tuple[object, ...] = (ops,)
    else:
        source = sql.SQL("SELECT {} FROM {} s").format(live.cols("s", work.columns), temp(work.staged))
        params = ()
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE {}").format(live.ident, cols, source), params or None
    )


def insert_missing(conn: psycopg.Connection, work: TableWork) -> int:
    """A parent table: the staged rows whose key the live table lacks (nothing else is touched)."""
    live = work.live
    if not (work.keyed and work.changed):
        return 0
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {scols} FROM {s} s "
            "WHERE NOT EXISTS (SELECT 1 FROM {t} t WHERE {m})"
        ).format(
            t=live.ident,
            cols=live.cols(None, work.columns),
            scols=live.cols("s", work.columns),
            s=temp(work.staged),
            m=work.key_match("t", "s"),
        )
    )
    return cur.rowcount


# --- the target's triggers ---------------------------------------------------------------------------------
TRIGGER_STATES = {"O": "ENABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}


def disable_user_triggers(
    conn: psycopg.Connection, tables: list[LiveTable], changed: list[LiveTable], deleted: list[LiveTable]
) -> list[tuple[str, str, str]]:
    """Switch off the user triggers inside the open transaction, so they do not rewrite restored values
    (updated_at); foreign keys and checks stay enforced (their triggers are internal). Of ``tables``: those
    whose rows change (``changed``) and those a foreign key's ON DELETE action reaches from a table whose rows
    are deleted (``deleted``), with their partitions. One ALTER TABLE per relation: each is a schema change the
    DDL capture reports. Returns (relation, trigger, state) to put back before the commit."""
    names = [sql.Identifier(*t.qualified).as_string(conn) for t in tables]
    found = conn.execute(
        """
        SELECT r.oid::regclass::text, g.tgname, g.tgenabled::text
          FROM unnest(%(all)s::text[]) AS n(name)
          CROSS JOIN LATERAL (SELECT n.name::regclass AS relid  -- a plain table has no partition tree
                              UNION SELECT relid FROM pg_partition_tree(n.name::regclass)) p
          JOIN pg_class r ON r.oid = p.relid
          JOIN pg_trigger g ON g.tgrelid = r.oid AND NOT g.tgisinternal AND g.tgenabled <> 'D'
         WHERE n.name = ANY(%(changed)s::text[])
            OR EXISTS (SELECT 1 FROM pg_constraint f
                        WHERE f.contype = 'f' AND f.conrelid = n.name::regclass AND f.confdeltype IN ('c', 'n', 'd')
                          AND f.confrelid = ANY(%(deleted)s::text[]::regclass[]))
         ORDER BY 1, 2
        """,
        {
            "all": names,
            "changed": [sql.Identifier(*t.qualified).as_string(conn) for t in changed],
            "deleted": [sql.Identifier(*t.qualified).as_string(conn) for t in deleted],
        },
    ).fetchall()
    saved = [(r, t, s) for r, t, s in found]
    _alter_triggers(conn, [(r, t, "DISABLE") for r, t, _ in saved])
    return saved


def restore_triggers(conn: psycopg.Connection, saved: list[tuple[str, str, str]]) -> None:
    _alter_triggers(conn, [(r, t, TRIGGER_STATES[s]) for r, t, s in saved])


def _alter_triggers(conn: psycopg.Connection, changes: list[tuple[str, str, str]]) -> None:
    """(relation, trigger, DISABLE / ENABLE ...): one ALTER TABLE per relation, its triggers as subcommands."""
    by_relation: dict[str, list[sql.Composable]] = {}
    for rel, trigger, state in changes:
        by_relation.setdefault(rel, []).append(sql.SQL("{} TRIGGER {}").format(sql.SQL(state), sql.Identifier(trigger)))
    for rel, actions in by_relation.items():
        conn.execute(sql.SQL("ALTER TABLE ONLY {} {}").format(sql.SQL(rel), sql.SQL(", ").join(actions)))
