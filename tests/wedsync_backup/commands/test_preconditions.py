"""A tier without its precondition skips with a message that says why and what starts it; commit logs fit the tier."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from wedsync_backup.commands.backup import completion_summary
from wedsync_backup.commands.incremental import require_a_full_backup
from wedsync_backup.commands.resources import NothingToDo

from tests.fixtures.storage import StorageTargets


def test_incremental_skips_until_a_full_backup_exists(storage_targets: StorageTargets) -> None:
    with pytest.raises(NothingToDo) as e:
        require_a_full_backup(storage_targets.primary)
    msg = str(e.value)
    assert "No full backup exists yet" in msg
    assert "backup_daily_full" in msg and "starts the chain" in msg


def test_an_incremental_reports_changes_not_tables() -> None:
    m = SimpleNamespace(
        backup_type="incremental",
        backup_id="inc-1",
        tables=[],
        total_rows=0,
        stored_bytes=18099,
        extra={"changes": 12, "transactions": 3, "start_lsn": "0/1", "end_lsn": "0/2"},
    )
    line = completion_summary(m, 3)
    assert line.startswith("Backup inc-1 completed: 12 changes in 3 transactions (LSN 0/1 -> 0/2)")
    assert "tables" not in line and line.endswith("18099 bytes stored x 3 verified copies")


def test_a_full_backup_reports_tables_and_rows() -> None:
    m = SimpleNamespace(backup_type="full", backup_id="f-1", tables=[1, 2], total_rows=7, stored_bytes=10, extra={})
    assert completion_summary(m, 3) == "Backup f-1 completed: 2 tables, 7 rows, 10 bytes stored x 3 verified copies"
