"""A target read as a repository: only backups with a manifest exist, and a missing one says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from wedsync_backup.errors import IntegrityError, StorageError
from wedsync_backup.manifest import Manifest, StoredObject, backup_prefix, manifest_key
from wedsync_backup.repository import committed_backup_ids, committed_manifests, read_manifest
from wedsync_backup.storage.base import Storage
from wedsync_backup.storage.local import LocalStorage

from tests.fixtures.storage import StorageTargets


def manifest(backup_id: str) -> Manifest:
    schema = StoredObject(f"{backup_prefix(backup_id)}schema.wsb", 10, "b" * 64, 20, "a" * 64)
    return Manifest(
        backup_id=backup_id,
        backup_type="full",
        created_at="2026-03-01T02:00:00+00:00",
        source={"database": "wedsync"},
        consistent_point={"time": "2026-03-01T02:00:00+00:00"},
        encryption={},
        compression={},
        schema={"object": schema.__dict__},
    )


def commit(store: Storage, backup_id: str) -> None:
    store.put_bytes(f"{backup_prefix(backup_id)}schema.wsb", b"x" * 10)
    store.put_bytes(manifest_key(backup_id), manifest(backup_id).to_bytes())


def test_only_backups_with_a_manifest_are_committed(storage_targets: StorageTargets) -> None:
    for store in storage_targets:
        commit(store, "full-2026-03-02")
        commit(store, "full-2026-03-01")
        store.put_bytes(f"{backup_prefix('crashed')}data/00000-public.users-000.wsb", b"x")
        store.put_bytes(f"{backup_prefix('uncommitted')}manifest.pending.json", b"{}")
        store.put_bytes(f"{backup_prefix('nested')}data/manifest.json", b"{}")  # not at the backup's root
        store.put_bytes("manifest.json", b"{}")
        assert committed_backup_ids(store) == ["full-2026-03-01", "full-2026-03-02"], store.name
        got = [m.backup_id for m in committed_manifests(store)]
        assert got == ["full-2026-03-01", "full-2026-03-02"]
        assert read_manifest(store, "full-2026-03-01").to_bytes() == manifest("full-2026-03-01").to_bytes()


def test_empty_target_has_no_backups(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "never-written", name="primary", medium="disk", site="a")
    assert committed_backup_ids(store) == []
    assert committed_manifests(store) == []


def test_missing_backup_says_what_to_do(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, name="primary", medium="disk", site="a")
    store.put_bytes(f"{backup_prefix('half')}schema.wsb", b"x")
    for backup_id in ("nope", "half"):
        with pytest.raises(StorageError) as e:
            read_manifest(store, backup_id)
        text = str(e.value)
        assert f"Backup {backup_id} has no manifest on target primary" in text
        assert manifest_key(backup_id) in text  # where it looked
        assert "To fix: pick a completed backup" in text
        assert e.value.fix


def test_unreadable_manifest_is_named_and_does_not_hide_the_others(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, name="primary", medium="disk", site="a")
    commit(store, "good")
    store.put_bytes(manifest_key("garbled"), b"{not json")
    store.put_bytes(manifest_key("future"), json.dumps({**manifest("future").to_dict(), "format_version": 99}).encode())
    with pytest.raises(IntegrityError, match="manifest of garbled on primary is not a valid WedSync manifest"):
        read_manifest(store, "garbled")
    with pytest.raises(IntegrityError, match="format version 99") as e:
        read_manifest(store, "future")
    assert "release that wrote it" in e.value.fix
    assert [m.backup_id for m in committed_manifests(store)] == ["good"]
