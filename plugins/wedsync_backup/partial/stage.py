"""Staging: the backup's rows, and the changes a restore makes, as temporary tables of one target session.

Nothing here is visible to any other session or outlives it. Rows stream through (COPY out of a scratch
database, or decrypted from the backup's objects, COPY into the stage): never held in memory whole.

Where the DDL capture (``logical/ddl.py``) is installed, every CREATE TEMP TABLE would fire its event triggers:
a schema fingerprint (~13 ms) for a message that only says "temporary, nothing to replay". ``Staging.quiet``
creates them past those triggers instead, when the session may (see there).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from wedsync_backup.crypto import Keyring
from wedsync_backup.logical.ddl import TRIGGERS, emit_marker
from wedsync_backup.manifest import StoredObject, TableEntry
from wedsync_backup.partial.shape import LiveTable
from wedsync_backup.restore import _load_part
from wedsync_backup.storage.base import Storage

TEMP = "pg_temp"
INDEX_MIN_ROWS = 5000  # smaller staged tables are scanned: an index (and ANALYZE) would cost more than it saves


def temp(name: str) -> sql.Identifier:
    """A staging table of this session, by the name Staging gave it."""
    return sql.Identifier(TEMP, name)


def bind(conn: psycopg.Connection, query: sql.Composable, params: Mapping[str, Any] | None) -> str:
    """``query`` with its parameters inlined: COPY and CREATE TABLE AS take no server-side parameters."""
    return psycopg.ClientCursor(conn).mogrify(query, params or None)


class Staging:
    """Temporary tables on ``conn`` (a session of the restore target), numbered as they are made."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._n = 0
        self.rows: dict[str, int] = {}  # staged table -> rows in it
        self._may_quiet: bool | None = None  # known on first use

    def _create(self, kind: str, select: sql.Composable) -> str:
        self._n += 1
        name = f"_ws_{kind}{self._n}"
        cur = self.conn.execute(sql.SQL("CREATE TEMP TABLE {} AS {}").format(sql.Identifier(name), select))
        self.rows[name] = max(cur.rowcount, 0)
        return name

    def empty_like(self, live: LiveTable, columns: Sequence[str]) -> str:
        """A new temporary table with ``columns`` of ``live``, typed exactly as the live table has them."""
        return self._create("s", sql.SQL("SELECT {} FROM {} WITH NO DATA").format(live.cols(None, columns), live.ident))

    def actions(self, select: sql.Composable, key: Sequence[str]) -> str:
        """A temporary table of what ``select`` returns (a table's changes: key..., op), indexed on ``key``
        once there are enough rows for an index to pay."""
        name = self._create("a", select)
        self.index(name, key)
        return name

    def _quiet_allowed(self) -> bool:
        """Only the DDL capture's event triggers are enabled (anyone else's keep firing) and the session may
        set session_replication_role (a superuser, as the capture's installer was)."""
        if self._may_quiet is None:
            ours, every = self.conn.execute(
                "SELECT count(*) FILTER (WHERE evtname = ANY(%s)), count(*) FROM pg_event_trigger"
                " WHERE evtenabled <> 'D'",
                (list(TRIGGERS),),
            ).fetchone()
            superuser = self.conn.info.parameter_status("is_superuser") == "on"
            self._may_quiet = bool(superuser and ours and ours == every)
        return self._may_quiet

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Within the open transaction, temporary tables created without the DDL capture's event triggers;
        the transaction is marked as ours in the change stream, as their skipped messages marked it.

        session_replication_role = replica also stops foreign-key checks and user triggers: only reads and
        temporary tables may run inside; the role is put back on the way out, before any live row is written
        (a failed transaction is rolled back whole, the setting with it)."""
        role = self.conn.execute("SHOW session_replication_role").fetchone()[0] if self._quiet_allowed() else None
        if role != "origin":
            yield
            return
        self.conn.execute("SET LOCAL session_replication_role = replica")
        emit_marker(self.conn, "partial restore: temporary tables")
        try:
            yield
        finally:
            if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                self.conn.execute("SET LOCAL session_replication_role = origin")

    def index(self, name: str, columns: Sequence[str]) -> None:
        """Index the staged rows on ``columns`` (the key they are matched by) and give the planner their size,
        once there are enough of them to matter."""
        if self.rows.get(name, 0) < INDEX_MIN_ROWS:
            return
        if columns:
            self.conn.execute(
                sql.SQL("CREATE INDEX ON {} ({})").format(temp(name), sql.SQL(", ").join(map(sql.Identifier, columns)))
            )
        self.conn.execute(sql.SQL("ANALYZE {}").format(temp(name)))

    def load_query(
        self,
        dest: str,
        columns: Sequence[str],
        source: psycopg.Connection,
        query: sql.Composable,
        params: Mapping[str, Any] | None,
    ) -> int:
        """Stream the rows ``query`` selects on ``source`` (another database) into ``dest``."""
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        out = sql.SQL("COPY (SELECT {} FROM ({}) m) TO STDOUT").format(cols, query)
        rows = 0
        with source.cursor() as rc, rc.copy(bind(source, out, params)) as reader:
            with (
                self.conn.cursor() as wc,
                wc.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(temp(dest), cols)) as writer,
            ):
                for data in reader:
                    writer.write(data)
            rows = wc.rowcount
        self.rows[dest] += rows
        return rows

    def load_lines(self, dest: str, columns: Sequence[str], lines: Iterable[bytes]) -> int:
        """COPY text lines (a wedding backup's section) into ``dest``."""
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        with self.conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(temp(dest), cols)) as writer:
                for line in lines:
                    writer.write(line)
            self.rows[dest] += cur.rowcount
            return cur.rowcount

    def load_parts(
        self,
        dest: str,
        entry: TableEntry,
        parts: Iterable[StoredObject],
        storage: Storage,
        keyring: Keyring,
        backup_id: str,
    ) -> int:
        """Decrypt ``parts`` of a backup's table (each checked against its checksum) into ``dest``."""
        staged = replace(entry, schema=TEMP, name=dest)
        rows = sum(_load_part(self.conn, staged, obj, storage, keyring, backup_id) for obj in parts)
        self.rows[dest] += rows
        return rows
