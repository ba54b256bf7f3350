"""When each priority group of a restore becomes usable: every table of it loaded and indexed.

A restore loads tables in priority order. As soon as the last table of a group is in, the worker that loaded
it builds every index (and primary key / unique constraint) of that group that is not built yet, in one
pg_restore, while the other workers go on loading the next group. The moment the group's last build ends
is its RTO: the critical group is usable long before the whole database is back. Foreign keys, triggers
and the like stay in the final post-data pass (they may reference tables of a later group).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from wedsync_backup.manifest import TableEntry
from wedsync_backup.policy import PRIORITY_GROUPS

# A build of TOC entries (pg_restore -L): the worker that claimed them runs it.
Build = Callable[[list[str]], None]


def index_entries_of(table: TableEntry, post_data: list[str]) -> list[str]:
    """The post-data TOC lines that build ``table``'s indexes and its primary key / unique constraints."""
    wanted = []
    for e in table.index_entries:
        kind, tag = e.split(" ", 1)
        wanted.append(f"{kind} {table.schema} {tag} ")
    return [line for line in post_data if any(_entry_key(line).startswith(w) for w in wanted)]


def _entry_key(line: str) -> str:
    """'3407; 1259 16567 INDEX pagila idx_x postgres' -> 'INDEX pagila idx_x postgres'."""
    return line.split(" ", 3)[3] if line.count(" ") >= 3 else line


class GroupClock:
    """Claims each group's index builds once and records when each group became usable.

    ``early(table)`` says whether a table's own indexes are built as soon as it is loaded (a large table,
    whose index build is worth overlapping with the loading of the others).
    """

    def __init__(
        self,
        tables: list[TableEntry],
        post_data: list[str],
        early: Callable[[TableEntry], bool],
        started: float | None = None,
    ) -> None:
        self.started = time.monotonic() if started is None else started  # time.monotonic() of the restore's start
        self._lock = threading.Lock()
        self._early = early
        self._post_data = post_data
        self._tables = {g: [t for t in tables if t.priority == g] for g in PRIORITY_GROUPS}
        self._waiting = {g: {t.qualified for t in ts} for g, ts in self._tables.items() if ts}
        self._inflight = dict.fromkeys(self._waiting, 0)
        self.claimed: set[str] = set()
        self.built: set[str] = set()
        self.usable_after: dict[str, float] = {}  # group -> seconds since the restore started
        self.usable_at: dict[str, str] = {}  # group -> ISO 8601 UTC

    def table_loaded(self, table: TableEntry, build: Build) -> None:
        """Called by the worker that loaded ``table``'s last part: builds what is due, records usability."""
        group = table.priority
        with self._lock:
            waiting = self._waiting[group]
            waiting.discard(table.qualified)
            due: list[TableEntry] = [table] if self._early(table) else []
            if not waiting:  # the group's data is complete: build every index of it not built yet
                due = self._tables[group]
            mine = [e for t in due for e in index_entries_of(t, self._post_data) if e not in self.claimed]
            self.claimed.update(mine)
            self._inflight[group] += 1
        try:
            if mine:
                build(mine)
        finally:
            with self._lock:
                self._inflight[group] -= 1
                self.built.update(mine)
                if not self._waiting[group] and self._inflight[group] == 0:
                    self._record(group)

    def _record(self, group: str) -> None:
        if group not in self.usable_after:
            self.usable_after[group] = round(time.monotonic() - self.started, 3)
            self.usable_at[group] = datetime.now(UTC).isoformat()

    def finish(self) -> None:
        """After the final post-data pass: every group not recorded yet is usable now."""
        with self._lock:
            for group in self._waiting:
                self._record(group)

    def rto_per_group(self) -> dict[str, float]:
        """Seconds from the restore's start until each group was usable, in priority order."""
        return {g: self.usable_after[g] for g in PRIORITY_GROUPS if g in self.usable_after}
