"""Follow a chain's decoded stream through schema changes: replay them, or end the chain just before one.

The guard reads test_decoding's lines in commit order (peeked with empty transactions included, so a
transaction that only changed the schema is visible as ``BEGIN x`` / ``COMMIT x``) and decides what goes into
the incremental:

* a captured schema change (``wedsync.ddl`` message, see ``ddl.py``) that maps exactly onto one statement of
  its query becomes a ``{"ddl": statement, ...}`` record, replayed at its position by the PITR replay;
* a change that cannot be replayed exactly (run inside a function or DO block, CREATE TABLE AS, a query whose
  statements do not line up with the trigger's commands) ends the chain *before its transaction*;
* an uncaptured change (no capture installed, or one that bypassed it) is detected by the schema fingerprint:
  each message carries the fingerprint before and after its command, and the capture compares the source's
  fingerprint at its end with the last one the stream accounts for. Then the chain ends before the first
  transaction since the last verified point that may have changed the schema: one that wrote no rows (a DDL-only
  transaction looks like that; not our own, marked ones, nor an ANALYZE) or that wrote catalog rows of user
  objects (``ddl_xids``: creations and alterations leave rows with their xid). Two kinds of change leave no
  such row, and the objects recorded at the verified point (``objects.py``: OIDs, and each table's columns as
  the decoder prints them) bound them from the stream itself:
  - a DROP: an object gone since the verified point moves the cut before the last transaction that wrote a
    row of it (a dropped table), or back to the verified point (any other object: nothing places it);
  - a change whose catalog rows a later change rewrote (a column renamed twice): a row decoded with columns
    other than its table's at the verified point ends the chain. When no transaction since the table's last
    row of the old shape left catalog rows of that table (``objects.object_xids``), the change left none: the
    cut goes before that last transaction (it may itself have changed the table after writing the row).
  - a change whose catalog rows a later transaction rewrote, with no row of the table written in between to
    show it: nothing of it is left. So every transaction that rewrote a catalog row of an object that existed
    at the verified point (``objects.object_xids``; read on past the cut to find the later ones) bounds where
    such an earlier change can be. A table's pg_class row alone hides nothing the fingerprint covers (a
    rename also writes the row type). Its columns and row type: the cut goes before the table's last row of
    its old shape before that transaction, unless a rewritten column's full type (with the modifier rows do
    not show) differs from the one recorded at the verified point, or the column count was not recorded:
    then back to the verified point. Any other object (an index, a view, a constraint, a function...): back
    to the verified point, as for a DROP. One added column, the table's pg_class row otherwise unchanged and
    rewritten by that transaction alone, hides nothing (``_added_column``). Such a rewrite also ends a chain
    whose fingerprint came out equal (a change undone by a later one), but for an index's or a sequence's
    own pg_class row, which TRUNCATE and REINDEX rewrite.
  Where the objects at the verified point are not known (a chain started before they were recorded, a point
  after a replayed change, a chain being closed), the cut goes back to the verified point. The cut is never
  later than the change itself, so every moment kept is exact; it may be earlier (the gap is reported).
* where the source lets the WAL be read (``wal_catalog.py``: pg_walinspect), the capture reads the stream a
  second time knowing every transaction that wrote a catalog row (``catalog_writers``). Those, and only those
  (not our own, marked ones), are the suspects: the first one since the verified point is where the chain ends,
  exactly before the change (or before a TRUNCATE or a temporary table that came first), and no DROP or rewrite
  needs to be bounded from the stream.

When the chain ends, the incremental records how many of its transactions to replay and the moment from which
it no longer knows the database exactly (``covered_until``); everything up to there stays restorable.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from wedsync_backup.logical.ddl import FENCE_PREFIX, MARKER_PREFIX, MESSAGE_PREFIX, Ddl, DdlMessage, message_content
from wedsync_backup.logical.decoding import Commit, change_head, change_shape, parse_line, same_shape_pattern
from wedsync_backup.logical.objects import SchemaObjects
from wedsync_backup.logical.statements import Statement, Unsplittable, ddl_statements, replayable

log = logging.getLogger(__name__)
NOT_REPLAYABLE_TAGS = {"CREATE TABLE AS", "SELECT INTO"}  # their rows are decoded before the table exists


@dataclass
class CaptureStats:
    """Counts of what an incremental holds: committed transactions only (a cut drops the open one)."""

    transactions: int = 0
    changes: int = 0
    first_commit: str | None = None
    last_commit: str | None = None
    last_commit_lsn: str | None = None
    last_xid: str | None = None
    per_table: dict[str, dict[str, int]] = field(default_factory=dict)
    _open: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    _open_changes: int = 0

    def see(self, lsn: str, xid: str, data: str | dict[str, Any]) -> None:
        """Count a captured line. Only its head is parsed: the values are parsed at restore time."""
        if not isinstance(data, str):
            return
        if data.startswith("COMMIT "):
            ev = parse_line(data)
            assert isinstance(ev, Commit)
            self.transactions += 1
            at = ev.at.astimezone(UTC).isoformat()
            self.first_commit = self.first_commit or at
            self.last_commit, self.last_commit_lsn, self.last_xid = at, lsn, xid
            self.changes += self._open_changes
            for table, ops in self._open.items():
                counts = self.per_table.setdefault(table, {})
                for op, n in ops.items():
                    counts[op] = counts.get(op, 0) + n
            self._open, self._open_changes = {}, 0
        elif data.startswith("BEGIN "):
            self._open, self._open_changes = {}, 0
        elif data.startswith("table "):
            self._open_changes += 1
            tables, op = change_head(data)
            for schema, table in tables:
                counts = self._open.setdefault(f"{schema}.{table}", {})
                counts[op] = counts.get(op, 0) + 1

    def committed(self) -> CaptureStats:
        """A copy without the open transaction."""
        c = copy.deepcopy(self)
        c._open, c._open_changes = {}, 0
        return c


@dataclass
class _Point:
    """A place between two transactions where the chain may end: what was captured before it."""

    transactions: int  # transactions written before this point
    stats: CaptureStats | None  # None: not kept while reading (the capture recounts it from what it stored)
    why: str = ""
    next_commit: str | None = None  # commit time of the first transaction after the point


class ChangeGuard:
    def __init__(
        self,
        expected_fingerprint: str | None,
        ddl_xids: set[str],
        skip_schemas: set[str],
        analyze_xids: set[str] | None = None,
        objects: SchemaObjects | None = None,
        object_xids: dict[str, dict[str, set[str]]] | None = None,
        catalog_writers: set[str] | None = None,
    ) -> None:
        self.expected = expected_fingerprint  # the schema as the stream so far accounts for it
        self.writers = catalog_writers  # every transaction that wrote a catalog row, from the WAL (None: unknown)
        self.ddl_xids = ddl_xids if catalog_writers is None else set()
        self.analyze_xids = analyze_xids or set()  # transactions that only gathered statistics
        self.skip_schemas = skip_schemas
        self.stats = CaptureStats()
        self.ddl: list[dict[str, Any]] = []  # the schema changes this incremental replays
        self.cut: _Point | None = None  # where the chain ends, once decided
        self.done = False  # nothing more to read
        self._written = 0  # transactions written
        self._held: tuple[str, str, str] | None = None  # a BEGIN not yet written (empty transactions are not)
        self._tx_has_content = False
        self._tx_explained = False  # a verified capture message in it
        self._tx_marked = False  # a message of ours (a marker, a captured change's fence) in it
        self._tx_suspect = False
        self._verified = _Point(0, CaptureStats(), "the last point the schema fingerprint was verified")
        self._suspect: _Point | None = None  # first transaction since then that may have changed the schema
        self._groups: dict[str, list[Statement] | None] = {}
        self._objects = objects  # the schema's objects at the verified point (None: not known)
        self._tables = {name: key for key, name in objects.tables.items()} if objects else {}
        self._tx_tables: set[str] = set()  # tables of ``_objects`` the open transaction wrote
        self._tx_shaped: set[str] = set()  # ... of which a full row showed the table's shape at the verified point
        self._tx_checked: set[tuple[str, str]] = set()  # (table, operation) whose columns this transaction checked
        self._patterns: dict[tuple[str, str], re.Pattern[str]] = {}  # (table, operation): lines of the old shape
        self._decoded: dict[str, _Point] = {}  # per table: the point before the last transaction that wrote it
        self._shaped: dict[str, _Point] = {}  # ... that wrote a full row of its shape at the verified point
        self._reshaped: list[tuple[str, str]] = []  # tables decoded with another shape: changed, uncaptured
        self._first_commit_since_write: str | None = None
        self._uncaptured = False  # the cut is for a change nothing captured
        self._xid_rows = object_xids or {}  # xid -> object -> which of its catalog rows it wrote (objects.py)
        self._touched: dict[str, int] = {}  # per table: where the last transaction that left its catalog rows began
        # (object, the rows rewritten, where the table last had a row of its old shape before the rewrite)
        self._rewrites: list[tuple[str, set[str], _Point]] = []

    # --- reading ---------------------------------------------------------------------------------------
    def feed(self, lsn: str, xid: str, data: str) -> list[tuple[str, str, str | dict[str, Any]]]:
        """The lines to write for one decoded line (none while a transaction's BEGIN is held)."""
        if self.done:
            return []
        if data.startswith("BEGIN "):
            self._held = (lsn, xid, data)
            self._tx_has_content = self._tx_explained = self._tx_marked = False
            self._tx_suspect = xid in self.ddl_xids
            self._tx_tables, self._tx_shaped, self._tx_checked = set(), set(), set()
            self._rewritten_by(xid)
            if self._tx_suspect:
                self._suspect_here(f"transaction {xid} changed the catalog rows of user objects")
            return []
        if data.startswith("COMMIT "):
            return self._commit(lsn, xid, data)
        if self.cut is not None:  # reading on only to learn when the cut transaction committed
            return []
        if data.startswith("table "):
            tables, op = change_head(data)
            if all(s in self.skip_schemas for s, _ in tables):
                return []
            if self._tables and self._changed_shape(data, tables, op):
                return []
            return self._content((lsn, xid, data))
        found = message_content(data)
        if found and found[0] == MESSAGE_PREFIX:
            return self._ddl_message(lsn, xid, DdlMessage.parse(found[1]))
        if found and found[0] in (FENCE_PREFIX, MARKER_PREFIX):
            self._tx_explained = self._tx_marked = True
            return []
        return self._content((lsn, xid, data))

    def finish(self, live_fingerprint: str | None, live_objects: SchemaObjects | None = None) -> None:
        """End of the stream: the source's schema now must be the one the stream accounts for.

        ``live_objects``: the objects in the same snapshot as ``live_fingerprint`` (None: not known).
        """
        if self.cut is None and self.expected and live_fingerprint and live_fingerprint != self.expected:
            self._end_at_suspect("the source's schema changed and the change was not captured")
        gone = self._objects.dropped(live_objects) if self._objects and live_objects else ([], [])
        if self.cut is None and (gone[0] or gone[1]):
            self._end_at_suspect(f"{len(gone[0]) + len(gone[1])} objects were dropped and the drop was not captured")
        rewritten = self._rewritten(live_objects) if self._objects is not None and live_objects is not None else []
        telling = [key for key, parts, _ in rewritten if not key.startswith("relation:") or parts != {"row"}]
        if self.cut is None and telling:
            # the schema looks unchanged, yet rows were rewritten: a change undone by a later one looks the same
            # (an index's or a sequence's pg_class row alone does not tell: TRUNCATE and REINDEX rewrite it)
            self._end_at_suspect(f"catalog rows of {telling[0]} were rewritten and nothing captured the change")
        if self._uncaptured and self.writers is None:  # known from the WAL, every change is a suspect already
            self._before_drops(*gone, known=self._objects is not None and live_objects is not None)
            self._before_rewrites(rewritten, live_objects)
        self.done = True

    @property
    def uncaptured(self) -> bool:
        """The chain ends at a change nothing captured."""
        return self.cut is not None and self._uncaptured

    @property
    def exact(self) -> bool:
        """Every catalog write was known (from the WAL): the cut is right before the first possible change."""
        return self.writers is not None

    @property
    def needs_recount(self) -> bool:
        """The cut moved to a point whose statistics were not kept: the capture recounts them."""
        return self.cut is not None and self.cut.stats is None

    # --- results ---------------------------------------------------------------------------------------
    @property
    def result_stats(self) -> CaptureStats:
        if self.cut is None:
            return self.stats.committed()
        assert self.cut.stats is not None, "recount the statistics first (needs_recount)"
        return self.cut.stats

    def chain_end(self, captured_at: str) -> dict[str, Any] | None:
        """What the manifest records when the chain ends here (None: it goes on)."""
        if self.cut is None:
            return None
        covered = captured_at
        if self.cut.next_commit:
            nxt = _iso(self.cut.next_commit)
            covered = (nxt - timedelta(microseconds=1)).isoformat()
        return {
            "reason": self.cut.why,
            # where an uncaptured change was placed: exactly (from the WAL) or no later than it (from the stream)
            "placed": None if not self._uncaptured else "exact" if self.exact else "bounded",
            "replay_transactions": self.cut.transactions,
            "covered_until": covered,
            "next_commit": self.cut.next_commit,
        }

    # --- internals -------------------------------------------------------------------------------------
    def _content(self, line: tuple[str, str, str | dict[str, Any]]) -> list[tuple[str, str, str | dict[str, Any]]]:
        out = []
        if self._held is not None:
            out.append(self._held)
            self._held = None
        self._tx_has_content = True
        out.append(line)
        for ln in out:
            self.stats.see(*ln)
        return out

    def _commit(self, lsn: str, xid: str, data: str) -> list[tuple[str, str, str | dict[str, Any]]]:
        at = parse_line(data)
        assert isinstance(at, Commit)
        when = at.at.astimezone(UTC).isoformat()
        if self.writers is not None and xid in self.writers and not self._tx_marked and self.cut is None:
            self._suspect_here(f"transaction {xid} wrote catalog rows (read from the WAL)")
        for p in (self.cut, self._suspect, self._verified):
            if p is not None and p.next_commit is None and p.transactions == self._written:
                p.next_commit = when
        if self.cut is not None:  # read on to the end: a later transaction may have rewritten earlier changes
            return []
        if self._first_commit_since_write is None:
            self._first_commit_since_write = when  # the next commit after the last written transaction
        if not self._tx_has_content:
            self._held = None
            if (
                self.writers is None
                and not self._tx_explained
                and not self._tx_suspect
                and xid not in self.analyze_xids
            ):
                self._suspect_here(f"transaction {xid} wrote no rows (a schema-only change looks like that)")
                if self._suspect is not None and self._suspect.next_commit is None:
                    self._suspect.next_commit = when
            return []
        line = (lsn, xid, data)
        self.stats.see(*line)
        before = _Point(self._written, None, "", self._first_commit_since_write)
        for key in self._tx_tables:  # the table existed when this transaction wrote it, maybe not after
            self._decoded[key] = before
        for key in self._tx_shaped:  # ... and had its old shape when it wrote it
            self._shaped[key] = before
        self._written += 1
        self._first_commit_since_write = None
        return [line]

    def _suspect_here(self, why: str) -> None:
        """The transaction starting now may have changed the schema unseen: remember the place before it."""
        if self._suspect is None:
            self._suspect = _Point(self._written, self.stats.committed(), why)

    def _changed_shape(self, line: str, tables: list[tuple[str, str]], op: str) -> bool:
        """Check the table's columns as decoded against its shape at the verified point (once per transaction
        and kind of change): True when they differ, so the table changed and nothing captured it (the chain
        ends; see ``finish``)."""
        assert self._objects is not None
        keys = [k for k in map(self._tables.get, tables) if k]
        self._tx_tables.update(keys)
        check = (keys[0], "delete" if op == "delete" else "row") if keys and op != "truncate" else None
        if check is None or check in self._tx_checked:
            return False
        self._tx_checked.add(check)
        key, expected = keys[0], self._objects.shapes[keys[0]]
        known = self._patterns.get((key, op))
        if known is not None and known.fullmatch(line):  # the common case, without parsing the row
            self._tx_shaped.add(key)
            return False
        columns = change_shape(line)[2]
        if op == "delete" and set(columns) <= set(expected):
            return False  # the key (or the whole old row): no proof of the whole shape, no contradiction either
        if tuple(columns) == expected:
            self._tx_shaped.add(key)
            if known is None and (pattern := same_shape_pattern(line)) is not None:
                self._patterns[(key, op)] = pattern
            return False
        schema, table = tables[0]
        self._reshaped.append((schema, table))
        why = (
            f"rows of {schema}.{table} were decoded with columns {', '.join(columns)}, not those it had at the last "
            "verified point: the table changed and the change was not captured"
        )
        point = self._suspect or _Point(
            self._written,
            self.stats.committed(),
            f"before transaction {self._written + 1}",
            self._first_commit_since_write,
        )
        self.cut = _Point(point.transactions, point.stats, f"{why}; {point.why}", point.next_commit)
        self._uncaptured = True  # finish moves the cut before the table's last row of the old shape
        return True

    def _end_before_this_tx(self, why: str) -> None:
        self.cut = _Point(self._written, self.stats.committed(), why)
        log.warning("The chain ends before this transaction: %s", why)

    def _end_at_suspect(self, why: str) -> None:
        point = self._suspect or self._verified
        self.cut = _Point(point.transactions, point.stats, f"{why}; {point.why}", point.next_commit)
        self._uncaptured = True
        log.warning("The chain ends early: %s", self.cut.why)

    def _before_drops(self, tables: list[tuple[str, str]], others: list[str], *, known: bool) -> None:
        """Move an uncaptured change's cut before every drop it may include (see ``objects.py``)."""
        assert self.cut is not None
        if not known:
            self._move_cut(self._verified, "the objects at that point are not known, so a DROP cannot be placed")
            return
        if others:
            self._move_cut(self._verified, f"{', '.join(others[:5])} were dropped, and a DROP leaves no trace")
        for schema, table in tables:
            key = self._tables[(schema, table)]
            point = self._decoded.get(key, self._verified)
            self._move_cut(point, f"table {schema}.{table} was dropped after it last had rows written")
        for schema, table in self._reshaped:
            key = self._tables[(schema, table)]
            point = self._shaped.get(key, self._verified)
            if self._touched.get(key, -1) >= point.transactions:
                continue  # a transaction since then left catalog rows of the table: it places the change (a suspect)
            self._move_cut(point, f"table {schema}.{table} changed after it last had a row of its old shape written")

    def _rewritten_by(self, xid: str) -> None:
        """Remember the catalog rows of objects at the verified point that the transaction starting now wrote."""
        for key, parts in self._xid_rows.get(xid, {}).items():
            if self.cut is None:
                self._touched[key] = self._written
            if self._objects is not None and key in self._objects.keys:
                self._rewrites.append((key, parts, self._shaped.get(key, self._verified)))

    def _rewritten(self, live: SchemaObjects) -> list[tuple[str, set[str], _Point]]:
        """The rewrites that may hide an earlier change: (object, the rows that may, the table's last old-shape
        row before the rewrite). A table's pg_class row, and the row of the one column added by the only
        transaction that rewrote it, hide nothing (see ``_added_column``)."""
        added = {key: self._added_column(key, live) for key, _, _ in self._rewrites}
        out = []
        for key, parts, shaped in self._rewrites:
            ambiguous = parts - {"class", f"col:{added[key]}"}
            if ambiguous:
                out.append((key, ambiguous, shaped))
        return out

    def _before_rewrites(self, rewritten: list[tuple[str, set[str], _Point]], live: SchemaObjects | None) -> None:
        """Move an uncaptured change's cut before every earlier change a rewrite may have erased (see above)."""
        assert self.cut is not None
        if self._objects is None or live is None:
            return  # the cut is at the verified point already (_before_drops)
        for key, parts, shaped in rewritten:
            if key not in self._objects.tables:
                self._move_cut(self._verified, f"catalog rows of {key} were rewritten, which may hide a change")
                continue
            point = shaped if self._columns_kept(key, parts, live) else self._verified
            name = ".".join(self._objects.tables[key])
            self._move_cut(point, f"catalog rows of table {name} were rewritten, which may hide a change")

    def _added_column(self, key: str, live: SchemaObjects) -> int | None:
        """The attnum of a column the only transaction that rewrote the table's pg_class row added, when that row
        changed in nothing but the column count: no earlier change can hide behind that column's row."""
        assert self._objects is not None
        if key not in self._objects.columns or key not in live.columns:
            return None
        natts, _, row = self._objects.columns[key]
        now, _, now_row = live.columns[key]
        classes = [parts for k, parts, _ in self._rewrites if k == key and "class" in parts]
        if now != natts + 1 or now_row != row or len(classes) != 1 or f"col:{now}" not in classes[0]:
            return None
        return now

    def _columns_kept(self, key: str, parts: set[str], live: SchemaObjects) -> bool:
        """Whether every rewritten column the table had at the verified point still has the full type recorded
        there (a change of the modifier alone shows in no decoded row); False when that was not recorded."""
        assert self._objects is not None
        if key not in self._objects.columns:
            return False
        natts, types, _ = self._objects.columns[key]
        now = live.columns.get(key, (0, {}, ""))[1]
        for n in (int(p[4:]) for p in parts if p.startswith("col:")):
            if n <= natts and (n not in types or now.get(n) != types[n]):
                return False
        return True

    def _move_cut(self, point: _Point, why: str) -> None:
        assert self.cut is not None
        if point.transactions < self.cut.transactions:
            where = point.why or f"before transaction {point.transactions + 1} of this capture"
            self.cut = _Point(point.transactions, point.stats, f"{self.cut.why}; {why}: {where}", point.next_commit)
            log.warning("The chain ends earlier: %s", self.cut.why)

    def _ddl_message(self, lsn: str, xid: str, m: DdlMessage) -> list[tuple[str, str, str | dict[str, Any]]]:
        if self.expected is not None and (m.before is None or m.before != self.expected):
            self._end_at_suspect(f"a schema change before the {m.tag} at LSN {lsn} was not captured")
            return []
        if m.nested:
            if m.skip:
                return []  # internal temporary objects (REFRESH ... CONCURRENTLY): nothing to replay
            self._end_before_this_tx(f"the {m.tag} at LSN {lsn} ran inside a function or DO block")
            return []
        if m.skip:
            self._tx_explained = True
            return []  # temporary objects, excluded schemas, our own schema
        if m.tag in NOT_REPLAYABLE_TAGS:
            self._end_before_this_tx(f"{m.tag} (at LSN {lsn}) cannot be replayed exactly")
            return []
        statement = self._statement(m)
        if statement is None:
            self._end_before_this_tx(f"the {m.tag} at LSN {lsn} does not map onto one statement of its query")
            return []
        self.expected = m.after
        # verified: the schema was exactly as expected just before this command
        self._verified = _Point(self._written, self.stats.committed(), f"before transaction {xid}")
        self._objects, self._tables = None, {}  # not known after a replayed change
        self._suspect = None
        if self._tx_suspect:
            self._suspect_here(f"transaction {xid} changed the catalog rows of user objects")
        self._tx_explained = True
        ddl = Ddl(replayable(statement.text), m.path, m.user, m.tag)
        self.ddl.append({"lsn": lsn, "xid": xid, "tag": m.tag, "statement": statement.text[:500]})
        return self._content((lsn, xid, ddl.record()))

    def _statement(self, m: DdlMessage) -> Statement | None:
        if m.group is None or m.ordinal is None:
            return None
        if m.query is not None:
            try:
                self._groups = {m.group: ddl_statements(m.query)}  # groups never interleave within a session
            except Unsplittable as e:
                log.warning("Cannot split the query of a schema change: %s", e)
                self._groups = {m.group: None}
        statements = self._groups.get(m.group)
        if not statements or m.ordinal >= len(statements) or not statements[m.ordinal].matches(m.tag):
            return None
        return statements[m.ordinal]


def _iso(text: str) -> datetime:
    return datetime.fromisoformat(text)
