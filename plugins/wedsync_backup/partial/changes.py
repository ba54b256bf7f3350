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
from wedsync_backup.partial.stage import INDEX_MIN_ROWS, temp

OPS = ("delete", "insert", "update")


@dataclass
class TableWork:
    """One table in scope: the live table, its staged backup rows and its staged live rows in scope."""

    live: LiveTable
    columns: tuple[str, ...]  # the columns compared and written (the live table's that the backup has)
    staged: str  # the backup's rows
    current: str  # the live rows in scope, as they were when the restore looked
    actions: str = ""  # keyed tables: (key..., op) of every row that changes
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


def count_changes(conn: psycopg.Connection, work: TableWork, actions_name: str) -> None:
    """Fill ``work.counts`` (and, for a keyed table, its actions table ``actions_name``)."""
    s, cur = temp(work.staged), temp(work.current)
    if work.keyed:
        keys = sql.SQL(", ").join(map(sql.Identifier, work.live.key))
        ks = work.live.cols("s", work.live.key)
        kl = work.live.cols("l", work.live.key)
        made = conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {name} AS "
                "SELECT {kl}, 'delete'::text AS op FROM {cur} l WHERE NOT EXISTS (SELECT 1 FROM {s} s WHERE {m}) "
                "UNION ALL SELECT {ks}, 'insert' FROM {s} s WHERE NOT EXISTS (SELECT 1 FROM {cur} l WHERE {m}) "
                "UNION ALL SELECT {kl}, 'update' FROM {cur} l JOIN {s} s ON {m} WHERE {lt} IS DISTINCT FROM {st}"
            ).format(
                name=sql.Identifier(actions_name),
                kl=kl,
                ks=ks,
                cur=cur,
                s=s,
                m=work.key_match("s", "l"),
                lt=work.row_text("l"),
                st=work.row_text("s"),
            )
        )
        work.actions = actions_name
        if made.rowcount >= INDEX_MIN_ROWS:
            conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(temp(actions_name), keys))
        rows = conn.execute(sql.SQL("SELECT op, count(*) FROM {} GROUP BY op").format(temp(actions_name))).fetchall()
    else:
        rows = conn.execute(
            sql.SQL(
                "SELECT 'delete', count(*) FROM (SELECT {lt} FROM {cur} l EXCEPT ALL SELECT {st} FROM {s} s) d "
                "UNION ALL "
                "SELECT 'insert', count(*) FROM (SELECT {st} FROM {s} s EXCEPT ALL SELECT {lt} FROM {cur} l) i"
            ).format(lt=work.row_text("l"), st=work.row_text("s"), cur=cur, s=s)
        ).fetchall()
    work.counts = dict.fromkeys(OPS, 0) | {op: int(n) for op, n in rows}


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
        sql.SQL("{} IN (SELECT {} FROM {}) AND ").format(sql.Identifier("t", c), sql.Identifier(c), temp(work.current))
        for c in hints
    )
    conn.execute(
        sql.SQL("DELETE FROM {only}{t} t WHERE {narrow}{tt} IN (SELECT {lt} FROM {cur} l)").format(
            only=_only(live),
            t=live.ident,
            narrow=narrow,
            tt=work.row_text("t"),
            lt=work.row_text("l"),
            cur=temp(work.current),
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
    if not work.keyed:
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


def disable_user_triggers(conn: psycopg.Connection, tables: list[LiveTable]) -> list[tuple[str, str, str]]:
    """Switch off the user triggers of ``tables`` (and their partitions) inside the open transaction, so
    they do not rewrite restored values (updated_at); foreign keys and checks stay enforced (their triggers
    are internal). Returns (relation, trigger, state) to put back before the commit."""
    names = [sql.Identifier(*t.qualified).as_string(conn) for t in tables]
    found = conn.execute(
        """
        SELECT r.oid::regclass::text, g.tgname, g.tgenabled::text
          FROM unnest(%s::text[]) AS n(name)
          CROSS JOIN LATERAL (SELECT n.name::regclass AS relid  -- a plain table has no partition tree
                              UNION SELECT relid FROM pg_partition_tree(n.name::regclass)) p
          JOIN pg_class r ON r.oid = p.relid
          JOIN pg_trigger g ON g.tgrelid = r.oid AND NOT g.tgisinternal AND g.tgenabled <> 'D'
        """,
        (names,),
    ).fetchall()
    for rel, trigger, _state in found:
        conn.execute(sql.SQL("ALTER TABLE ONLY {} DISABLE TRIGGER {}").format(sql.SQL(rel), sql.Identifier(trigger)))
    return [(r, t, s) for r, t, s in found]


def restore_triggers(conn: psycopg.Connection, saved: list[tuple[str, str, str]]) -> None:
    for rel, trigger, state in saved:
        conn.execute(
            sql.SQL("ALTER TABLE ONLY {} {} TRIGGER {}").format(
                sql.SQL(rel), sql.SQL(TRIGGER_STATES[state]), sql.Identifier(trigger)
            )
        )
