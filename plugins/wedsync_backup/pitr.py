"""Point-in-time recovery: replay an incremental chain on top of its restored full backup.

Changes are applied in commit order, one source transaction per target transaction, up to the last one
committed at or before the chosen moment. Each UPDATE and DELETE must hit exactly one row, or the replay
stops with an error (the caller then puts the target back as it was): the result is exact or nothing.

Schema changes captured on the source (``logical/ddl.py``) are replayed at their position, as the role and
with the search_path they ran with; the rows around them carry the column names and types of their moment, so
each change lands on the table shape of its time. Rows of materialized views are not replayed: a captured
CREATE or REFRESH MATERIALIZED VIEW rebuilds them from the replayed tables, as it did on the source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.incremental import read_changes
from wedsync_backup.logical.ddl import Ddl
from wedsync_backup.logical.decoding import UNCHANGED_TOAST, Begin, Change, Commit, Message
from wedsync_backup.logical.slot import STABLE_OUTPUT
from wedsync_backup.manifest import Manifest, TableEntry
from wedsync_backup.pg import PgTarget
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
PIPELINE_BATCH = 1000


@dataclass
class _Table:
    ident: sql.Composed
    generated: set[str]
    identity_always: set[str]
    key: list[str]  # primary key (or replica identity index) columns; empty: match the whole old row
    indexed: dict[str, str] = field(default_factory=dict)  # leading btree index columns -> their type
    matview: bool = False  # its rows come from CREATE/REFRESH MATERIALIZED VIEW, never from replayed changes


@dataclass
class ApplyResult:
    transactions: int = 0
    changes: int = 0
    last_commit: str | None = None
    stopped_at: str | None = None  # first commit after the target time, when the replay stopped there
    per_backup: dict[str, int] = field(default_factory=dict)


class _Applier:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.tables: dict[tuple[str, str], _Table] = {}
        self._sql: dict[tuple[object, ...], str] = {}
        # changes to a table that does not exist (yet): fine only if a DDL of the same transaction then
        # creates it as a materialized view (its rows are decoded before the CREATE's message)
        self.unknown: dict[tuple[str, str], str] = {}
        self.user = conn.execute("SELECT current_user").fetchone()[0]

    def _stmt(self, key: tuple[object, ...], build: Callable[[], sql.Composable]) -> str:
        """Composing SQL is slow in Python: each statement shape is composed once, then reused."""
        text = self._sql.get(key)
        if text is None:
            text = self._sql[key] = build().as_string(self.conn)
        return text

    def table(self, schema: str, name: str) -> _Table:
        t = self.find(schema, name)
        if t is None:
            raise _missing(schema, name)
        return t

    def find(self, schema: str, name: str) -> _Table | None:
        key = (schema, name)
        if key not in self.tables:
            row = self.conn.execute(
                """
                SELECT c.relkind = 'm',
                  ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0
                        AND NOT attisdropped AND attgenerated <> ''),
                  ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0
                        AND NOT attisdropped AND attidentity = 'a'),
                  ARRAY(SELECT a.attname::text FROM pg_index i
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                         WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)
                           AND c.relreplident <> 'f'
                         ORDER BY array_position(i.indkey, a.attnum)),
                  ARRAY(SELECT DISTINCT a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod)
                          FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                          JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                         WHERE i.indrelid = c.oid)
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = %s AND c.relname = %s
                """,
                (schema, name),
            ).fetchone()
            if row is None:
                return None
            indexed = dict(x.split(" ", 1) for x in row[4])
            self.tables[key] = _Table(
                sql.Identifier(schema, name), set(row[1]), set(row[2]), list(row[3]), indexed, matview=row[0]
            )
        return self.tables[key]

    def ddl(self, ddl: Ddl, lsn: str) -> None:
        """Run a captured schema change as it ran on the source; every cached table shape is stale after it."""
        path = sql.SQL(", ").join(map(sql.Identifier, ddl.path)) if ddl.path else sql.Literal("")
        self.conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(path))
        if ddl.user and ddl.user != self.user:
            self.conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(ddl.user)))
        self.conn.execute(ddl.statement.encode())
        self.conn.execute("RESET ROLE")
        self.conn.execute("RESET search_path")
        self.tables.clear()
        self._sql.clear()

    def resolve_unknown(self) -> None:
        """After a DDL: changes decoded before a CREATE MATERIALIZED VIEW were its rows, rebuilt by the CREATE."""
        for key in list(self.unknown):
            t = self.find(*key)
            if t is not None and t.matview:
                del self.unknown[key]

    def check_committable(self) -> None:
        if self.unknown:
            (schema, name), _lsn = next(iter(self.unknown.items()))
            self.unknown.clear()
            raise _missing(schema, name)

    def _where(
        self, t: _Table, change: Change
    ) -> tuple[tuple[object, ...], Callable[[], sql.Composable], list[object]]:
        """(shape key, condition builder, parameters) locating the row a change touched."""
        if not t.key and not change.old:
            raise IntegrityError(
                f"A captured {change.op} on {change.table[0]}.{change.table[1]} does not say which row it changed",
                "the table has no primary key and was not REPLICA IDENTITY FULL when the change was made",
                "restore to a point before it; the next full backup sets REPLICA IDENTITY FULL on such tables",
            )
        source = change.old or change.new
        if t.key and all(k in source for k in t.key):
            keys = t.key
            return (
                ("key", *keys),
                lambda: sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in keys),
                [source[k] for k in keys],
            )
        cols = [c for c, v in source.items() if v is not UNCHANGED_TOAST and c not in t.generated]
        # Exact match on the text of every column, plus a typed equality on indexed columns so the lookup
        # uses an index instead of scanning a table that has no key.
        hints = [c for c in cols if c in t.indexed and source[c] is not None]

        def build() -> sql.Composable:
            inner = sql.SQL(" AND ").join(
                [
                    *(sql.SQL("{} = %s::{}").format(sql.Identifier(c), sql.SQL(t.indexed[c])) for c in hints),
                    *(sql.SQL("{}::text IS NOT DISTINCT FROM %s").format(sql.Identifier(c)) for c in cols),
                ]
            )
            return sql.SQL("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)").format(t.ident, inner)

        return ("row", *hints, "|", *cols), build, [*(source[c] for c in hints), *(source[c] for c in cols)]

    def apply(self, change: Change, lsn: str) -> tuple[psycopg.Cursor, Change, str] | None:
        """Send the statement; UPDATE/DELETE return what to check once the pipeline has the results."""
        if change.op == "TRUNCATE":
            idents = [self.table(s, n).ident for s, n in change.tables]
            stmt = sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(idents))
            if "restart_seqs" in change.flags:
                stmt += sql.SQL(" RESTART IDENTITY")
            if "cascade" in change.flags:
                stmt += sql.SQL(" CASCADE")
            self.conn.execute(stmt)
            return None
        found = self.find(*change.table)
        if found is None:
            self.unknown.setdefault(change.table, lsn)
            return None
        t = found
        if t.matview:
            return None
        if change.op == "UPSERT":  # watermark captures: the row as it is now, inserted or overwritten
            cols = [c for c in change.new if c not in t.generated]
            sets = [c for c in cols if c not in t.key and c not in t.identity_always]
            stmt = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT ({}) DO {}").format(
                t.ident,
                sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.SQL(", ").join([sql.Placeholder()] * len(cols)),
                sql.SQL(", ").join(map(sql.Identifier, t.key)),
                sql.SQL("UPDATE SET {}").format(
                    sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in sets)
                )
                if sets
                else sql.SQL("NOTHING"),
            )
            self.conn.execute(stmt, [change.new[c] for c in cols])
            return None
        if change.op == "INSERT":
            cols = [c for c in change.new if c not in t.generated]
            stmt = self._stmt(
                ("I", change.table, *cols),
                lambda: sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})").format(
                    t.ident,
                    sql.SQL(", ").join(map(sql.Identifier, cols)),
                    sql.SQL(", ").join([sql.Placeholder()] * len(cols)),
                ),
            )
            self.conn.execute(stmt, [change.new[c] for c in cols])
            return None
        where_key, where_sql, params = self._where(t, change)
        if change.op == "UPDATE":
            sets = [
                c
                for c, v in change.new.items()
                if v is not UNCHANGED_TOAST and c not in t.generated and c not in t.identity_always
            ]
            if not sets:
                return None
            stmt = self._stmt(
                ("U", change.table, *sets, where_key),
                lambda: sql.SQL("UPDATE {} SET {} WHERE {}").format(
                    t.ident,
                    sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in sets),
                    where_sql(),
                ),
            )
            cur = self.conn.execute(stmt, [*(change.new[c] for c in sets), *params])
        else:
            stmt = self._stmt(
                ("D", change.table, where_key),
                lambda: sql.SQL("DELETE FROM {} WHERE {}").format(t.ident, where_sql()),
            )
            cur = self.conn.execute(stmt, params)
        return cur, change, lsn


def _missing(schema: str, name: str) -> IntegrityError:
    return IntegrityError(
        f"A captured change is for table {schema}.{name}, which the restored backup does not have",
        "the schema changed inside this chain and the change was not captured",
        "restore to a point before the change, or from the full backup taken after it",
    )


def _ddl_failed(ddl: Ddl, lsn: str, e: psycopg.Error) -> IntegrityError:
    why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return IntegrityError(
        f"Replaying the captured schema change at LSN {lsn} ({ddl.tag}) failed",
        f"{why}; the statement: {ddl.statement[:300]}",
        "check that the target server has the roles and extensions the source has; or restore to a point "
        "before this change",
    )


def _check(pending: list[tuple[psycopg.Cursor, Change, str]]) -> None:
    for cur, change, lsn in pending:
        if cur.rowcount != 1:
            raise IntegrityError(
                f"The captured {change.op} at LSN {lsn} on {change.table[0]}.{change.table[1]} matched "
                f"{cur.rowcount} rows instead of 1",
                "the restored data does not match what the chain was captured from",
                "restore from another target; if it happens there too, report it",
            )
    pending.clear()


def apply_chain(
    target: PgTarget,
    increments: list[tuple[Manifest, Storage]],
    keyring: Keyring,
    *,
    until: datetime | None = None,
) -> ApplyResult:
    """Replay ``increments`` (in chain order) into ``target`` up to ``until`` (inclusive; None: all)."""
    result = ApplyResult()
    with target.connect(autocommit=False) as conn:
        conn.execute(STABLE_OUTPUT)
        # Replay what the source did, not what the target's triggers would do: no BEFORE UPDATE
        # (updated_at), no FK cascades (the cascaded rows are in the chain as changes of their own).
        try:
            conn.execute("SET session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege as e:
            raise IntegrityError(
                f"Cannot replay changes into {target.label} without firing its triggers",
                "setting session_replication_role needs a superuser",
                "restore with a superuser connection (as pg_restore needs for a faithful restore)",
            ) from e
        conn.commit()
        applier = _Applier(conn)
        checks: list[tuple[psycopg.Cursor, Change, str]] = []
        # Pipeline mode: statements stream to the server without a round trip each; row counts are
        # checked at every sync (each commit, and every PIPELINE_BATCH statements).
        with conn.pipeline() as pipe:
            for manifest, storage in increments:
                n = pending = 0
                for lsn, _xid, ev in read_changes(manifest, storage, keyring):
                    if isinstance(ev, Begin):
                        pending = 0
                        applier.unknown.clear()
                        continue
                    if isinstance(ev, Message):
                        continue
                    if isinstance(ev, Ddl):
                        pipe.sync()
                        _check(checks)
                        try:
                            applier.ddl(ev, lsn)
                            pipe.sync()
                        except psycopg.Error as e:
                            raise _ddl_failed(ev, lsn, e) from e
                        applier.resolve_unknown()
                        pending += 1
                        continue
                    if isinstance(ev, Commit):
                        if until is not None and ev.at > until:
                            pipe.sync()
                            checks.clear()
                            conn.rollback()
                            result.stopped_at = ev.at.isoformat()
                            result.per_backup[manifest.backup_id] = n
                            return result
                        pipe.sync()
                        _check(checks)
                        applier.check_committable()
                        conn.commit()
                        result.transactions += 1
                        result.changes += pending
                        n += pending
                        result.last_commit = ev.at.isoformat()
                        continue
                    check = applier.apply(ev, lsn)
                    if check is not None:
                        checks.append(check)
                        if len(checks) >= PIPELINE_BATCH:
                            pipe.sync()
                            _check(checks)
                    pending += 1
                pipe.sync()
                checks.clear()
                conn.rollback()  # nothing uncommitted may survive the end of an increment
                result.per_backup[manifest.backup_id] = n
    return result


def bump_sequences(target: PgTarget, recorded: dict[str, list[object]] | None = None) -> list[str]:
    """Logical decoding carries no sequence changes: move each sequence past its columns' maximum, and at
    least to the value the last replayed capture recorded (``recorded``)."""
    with target.connect(autocommit=False) as conn:
        bumped = bump_sequences_in(conn, recorded)
        conn.commit()
    return bumped


def bump_sequences_in(
    conn: psycopg.Connection, recorded: dict[str, list[object]] | None = None, tables: list[str] | None = None
) -> list[str]:
    """bump_sequences on an open transaction; ``tables`` (SQL names): only the sequences of their columns."""
    bumped = []
    for seq, (value, called) in (recorded or {}).items():
        if not called:
            continue
        last, is_called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(seq))).fetchone()
        if last < int(value) or (last == int(value) and not is_called):
            conn.execute("SELECT setval(%s::regclass, %s, true)", (seq, int(value)))
            bumped.append(seq)
    rows = conn.execute(
        """
        SELECT s.oid::regclass::text, t.oid::regclass::text, a.attname
          FROM pg_class s JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
                                          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
          JOIN pg_class t ON t.oid = d.refobjid
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
         WHERE s.relkind = 'S' AND (%(tables)s::text[] IS NULL OR t.oid = ANY(%(tables)s::text[]::regclass[]))
        UNION  -- sequences no column owns but a column default draws from (nextval in DEFAULT)
        SELECT s.oid::regclass::text, t.oid::regclass::text, a.attname
          FROM pg_class s JOIN pg_depend d ON d.refobjid = s.oid AND d.refclassid = 'pg_class'::regclass
                                          AND d.classid = 'pg_attrdef'::regclass
          JOIN pg_attrdef ad ON ad.oid = d.objid
          JOIN pg_class t ON t.oid = ad.adrelid AND t.relkind IN ('r', 'p')
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ad.adnum
         WHERE s.relkind = 'S' AND (%(tables)s::text[] IS NULL OR t.oid = ANY(%(tables)s::text[]::regclass[]))
        """,
        {"tables": tables},
    ).fetchall()
    for seq, table, column in rows:
        top, last, called = conn.execute(  # one round trip per sequence
            sql.SQL("SELECT (SELECT max({})::bigint FROM {}), last_value, is_called FROM {}").format(
                sql.Identifier(column), sql.SQL(table), sql.SQL(seq)
            )
        ).fetchone()
        if top is None:
            continue
        if last < top or (last == top and not called):
            conn.execute("SELECT setval(%s::regclass, %s, true)", (seq, top))
            bumped.append(seq)
    return bumped


@dataclass
class ChainPlan:
    """What a point-in-time (or latest) restore will replay: a full backup and its incrementals."""

    full: Manifest
    increments: list[Manifest]
    until: datetime | None
    last_captured: str | None  # the last change the chain holds (commit time)
    covered_until: str  # the chain knows the database exactly up to this moment

    def as_dict(self) -> dict[str, object]:
        return {
            "full_backup_id": self.full.backup_id,
            "incremental_backup_ids": [m.backup_id for m in self.increments],
            "until": self.until.isoformat() if self.until else None,
            "last_captured_change": self.last_captured,
            "covered_until": self.covered_until,
        }


def _at(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def _covered_until(m: Manifest) -> str | None:
    """Up to when an incremental knows the database exactly: its capture, or just before where its chain ended."""
    end = m.extra.get("chain_end") or {}
    return end.get("covered_until") or m.extra.get("captured_at")


def chain_of(full: Manifest, manifests: list[Manifest]) -> list[Manifest]:
    """The committed incrementals of ``full``'s chain, in order, stopping at the first gap."""
    by_parent = {m.parent_backup_id: m for m in manifests if m.backup_type == "incremental"}
    out, cur = [], full.backup_id
    while cur in by_parent:
        nxt = by_parent[cur]
        out.append(nxt)
        cur = nxt.backup_id
    return out


def plan_chain(manifests: list[Manifest], until: datetime | None) -> ChainPlan:
    """Pick the nearest full at or before ``until`` (None: the newest) and the increments to replay.

    Refuses, naming the restorable window, a moment before the first full or after the last capture.
    """
    fulls = sorted(
        (m for m in manifests if m.backup_type in ("full", "archive", "manual")),
        key=lambda m: _at(m.consistent_point.get("time")) or _at(m.created_at),
    )
    if not fulls:
        raise IntegrityError("No complete full backup on this target", fix="run backup_daily_full first")
    windows = []
    for f in fulls:
        chain = chain_of(f, manifests)
        end = _covered_until(chain[-1]) if chain else f.consistent_point.get("time")
        windows.append((f, chain, _at(f.consistent_point.get("time")), _at(end)))
    if until is None:
        f, chain, _, end = windows[-1]
        last = chain[-1].extra.get("last_commit") if chain else None
        return ChainPlan(f, chain, None, last, end.isoformat() if end else "")
    for f, chain, start, end in reversed(windows):
        if start and start <= until:
            if end and until <= end:
                keep = []
                for m in chain:
                    keep.append(m)
                    if (_at(_covered_until(m)) or until) >= until:
                        break
                last = keep[-1].extra.get("last_commit") if keep else None
                return ChainPlan(f, keep, until, last, end.isoformat())
            break
    ranges = "; ".join(f"{s.isoformat()} to {e.isoformat()}" for _, _, s, e in windows if s and e)
    raise IntegrityError(
        f"No backup covers {until.isoformat()}",
        f"the restorable moments on this target are: {ranges}",
        "choose a target_time inside one of those ranges (or mode=latest)",
    )


def restore_to_point(
    plan: ChainPlan,
    storage: Storage,
    keyring: Keyring,
    target: PgTarget,
    *,
    workers: int = 2,
    on_table_loaded: Callable[[TableEntry], None] | None = None,
) -> dict[str, object]:
    """Restore ``plan``'s full backup, replay its increments up to ``plan.until``: all or nothing."""
    from wedsync_backup.restore import _unmark_restore, put_back_interrupted, restore_backup, verify_manifest_mac

    for m in plan.increments:  # authenticate every manifest before the target is touched
        verify_manifest_mac(m, keyring)

    full = restore_backup(
        plan.full, storage, keyring, target, workers=workers, on_table_loaded=on_table_loaded, keep_mark=True
    )
    try:
        applied = apply_chain(target, [(m, storage) for m in plan.increments], keyring, until=plan.until)
        replayed = [m for m in plan.increments if m.backup_id in applied.per_backup]
        # a capture's recorded values are only safe to use when the replay went all the way through it
        recorded = replayed[-1].extra.get("sequences") if replayed and applied.stopped_at is None else None
        bumped = bump_sequences(target, recorded)
        _unmark_restore(target)  # only now is the restore whole
    except BaseException:
        # the mark (kept through the replay) holds schema public as it was before: the one way back
        log.error("%s", put_back_interrupted(target, plan.full.backup_id).message)
        raise
    return {
        **full.as_dict(),
        **plan.as_dict(),
        "replayed_transactions": applied.transactions,
        "replayed_changes": applied.changes,
        "last_replayed_commit": applied.last_commit,
        "sequences_bumped": len(bumped),
    }
