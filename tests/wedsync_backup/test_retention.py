"""Retention: what may be pruned, and pruning that never leaves a committed backup with objects missing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from wedsync_backup.errors import StorageError
from wedsync_backup.manifest import Manifest, StoredObject, backup_prefix, manifest_key
from wedsync_backup.repository import committed_backup_ids
from wedsync_backup.retention import delete_backup, incomplete_backup_ids, select_prunable
from wedsync_backup.storage.base import Storage
from wedsync_backup.storage.local import LocalStorage

from tests.fixtures.storage import StorageTargets

NOW = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def manifest(backup_id: str, days_ago: float, backup_type: str = "full") -> Manifest:
    at = (NOW - timedelta(days=days_ago)).isoformat()
    schema = StoredObject(f"{backup_prefix(backup_id)}schema.wsb", 10, "b" * 64, 20, "a" * 64)
    return Manifest(
        backup_id=backup_id,
        backup_type=backup_type,
        created_at=at,
        source={},
        consistent_point={"snapshot": "s", "lsn": "0/1", "txid_snapshot": "1:1:", "time": at},
        encryption={},
        compression={},
        schema={"object": schema.__dict__},
    )


def test_old_backups_go_recent_ones_stay() -> None:
    ms = [manifest("f-40", 40), manifest("f-31", 31), manifest("f-29", 29), manifest("f-1", 1)]
    assert select_prunable(ms, now=NOW, retention_days=30) == ["f-40", "f-31"]


def test_the_newest_full_is_kept_even_when_older_than_the_window() -> None:
    ms = [manifest("f-90", 90), manifest("f-60", 60), manifest("f-45", 45)]
    assert select_prunable(ms, now=NOW, retention_days=30) == ["f-90", "f-60"]
    assert select_prunable([manifest("only", 400)], now=NOW, retention_days=30) == []
    assert select_prunable([], now=NOW, retention_days=30) == []


def test_only_the_given_type_is_considered() -> None:
    ms = [
        manifest("f-60", 60),
        manifest("f-50", 50),
        manifest("i-55", 55, "incremental"),
        manifest("i-45", 45, "incremental"),
        manifest("m-70", 70, "manual"),
    ]
    assert select_prunable(ms, now=NOW, retention_days=30) == ["f-60"]
    assert select_prunable(ms, now=NOW, retention_days=30, backup_type="incremental") == ["i-55"]
    assert select_prunable(ms, now=NOW, retention_days=30, backup_type="manual") == []


def test_input_order_does_not_matter() -> None:
    ms = [manifest("f-1", 1), manifest("f-90", 90), manifest("f-45", 45)]
    assert sorted(select_prunable(ms, now=NOW, retention_days=30)) == ["f-45", "f-90"]


def _store_backup(store: Storage, backup_id: str, *, committed: bool = True) -> None:
    for name in ("schema.wsb", "data/00000-public.users-000.wsb", "data/00001-public.forms-000.wsb"):
        store.put_bytes(backup_prefix(backup_id) + name, b"x" * 10)
    if committed:
        store.put_bytes(manifest_key(backup_id), b"{}")


def test_delete_backup_removes_everything_on_every_target(storage_targets: StorageTargets) -> None:
    for store in storage_targets:
        _store_backup(store, "old")
        _store_backup(store, "keep")
        assert delete_backup(store, "old") == 4
        assert not store.exists(manifest_key("old"))
        assert list(store.list(backup_prefix("old"))) == []
        assert committed_backup_ids(store) == ["keep"]
        assert len(list(store.list(backup_prefix("keep")))) == 4


class _FailsAfterManifest(LocalStorage):
    """A real local target whose disk fails right after the first delete (fault injection, not a mock)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, name="primary", medium="disk", site="a")
        self.deletes = 0

    def delete(self, keys: list[str]) -> None:
        self.deletes += 1
        if self.deletes > 1:
            raise StorageError("Cannot delete (target primary)", "Input/output error", "check the disk")
        super().delete(keys)


def test_a_prune_stopped_half_way_leaves_an_incomplete_backup_not_a_broken_one(tmp_path: Path) -> None:
    store = _FailsAfterManifest(tmp_path)
    _store_backup(store, "old")
    with pytest.raises(StorageError):
        delete_backup(store, "old")
    assert committed_backup_ids(store) == []  # the manifest went first
    assert len(list(store.list(backup_prefix("old")))) == 3
    assert incomplete_backup_ids(store, committed=set(), in_progress=set()) == ["old"]


def test_incomplete_backup_ids(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, name="primary", medium="disk", site="a")
    _store_backup(store, "done")
    _store_backup(store, "crashed", committed=False)
    _store_backup(store, "running", committed=False)
    store.put_bytes(f"{backup_prefix('pending-only')}manifest.pending.json", b"{}")
    store.put_bytes("elsewhere/not-a-backup", b"x")
    assert incomplete_backup_ids(store, committed={"done"}, in_progress={"running"}) == ["crashed", "pending-only"]
    assert incomplete_backup_ids(LocalStorage(tmp_path / "none", name="p", medium="d", site="a"), set(), set()) == []


def test_full_and_manual_backups_age_out_together() -> None:
    """The full tier prunes manual backups too (both start a chain); the newest of the two is always kept."""
    ms = [manifest("m-70", 70, "manual"), manifest("f-60", 60), manifest("m-40", 40, "manual"), manifest("f-5", 5)]
    assert select_prunable(ms, now=NOW, retention_days=30, backup_type=("full", "manual")) == ["m-70", "f-60", "m-40"]
    only_manual = [manifest("m-70", 70, "manual"), manifest("m-40", 40, "manual")]
    assert select_prunable(only_manual, now=NOW, retention_days=30, backup_type=("full", "manual")) == ["m-70"]
