"""The full backup's one task (commands.full_backup): the preflight first, then copies written during the export,
every copy verified, then the commit; a failing replica leaves no counted copy anywhere; a retry starts clean."""

from __future__ import annotations

from pathlib import Path

import pytest
from wedsync_backup.commands import backup
from wedsync_backup.commands.full_backup import export_verify_commit, preflight_and_full_backup
from wedsync_backup.commands.resources import Resources
from wedsync_backup.errors import StorageError, WedSyncError
from wedsync_backup.manifest import backup_prefix, manifest_key
from wedsync_backup.policy import TargetPolicy
from wedsync_backup.repository import read_manifest
from wedsync_backup.storage.base import Storage
from wedsync_backup.storage.local import LocalStorage

from tests.wedsync_backup.commands.conftest import World


def keys(world: World, backup_id: str) -> dict[str, set[str]]:
    return {n: {o.key for o in s.list(backup_prefix(backup_id))} for n, s in world.storages.items()}


def test_copies_are_written_during_the_export_verified_and_committed(world: World) -> None:
    res, run = world.resources(), world.run()
    backup_id = backup.begin(res, run).backup_id
    stray = f"{backup_prefix(backup_id)}left-by-an-interrupted-attempt.wsb"
    for name in ("secondary", "offsite"):  # an earlier attempt died after writing part of a copy
        world.storages[name].put_bytes(stray, b"partial")

    done = export_verify_commit(res, backup_id, run)
    assert done.verified == ["primary", "secondary", "offsite"] and done.committed.status == "completed"
    row = world.catalog.get_backup(backup_id)
    assert row is not None and row["status"] == "completed" and row["integrity_verified"]
    assert sorted(r["target_name"] for r in row["replicas"]) == ["offsite", "primary", "secondary"]
    copies = keys(world, backup_id)
    assert copies["primary"] == copies["secondary"] == copies["offsite"]  # the same objects, no stray one
    assert stray not in copies["secondary"] and manifest_key(backup_id) in copies["offsite"]
    manifest = read_manifest(world.storages["offsite"], backup_id)
    for obj in manifest.objects():  # byte for byte the primary's
        assert world.storages["offsite"].get_bytes(obj.key) == world.storages["primary"].get_bytes(obj.key)

    again = export_verify_commit(res, backup_id, run)  # a retry after the commit changes nothing
    assert again.exported.manifest_sha256 == done.exported.manifest_sha256
    assert keys(world, backup_id) == copies


def test_the_one_task_runs_the_preflight_first(world: World, tmp_path: Path) -> None:
    """backup_daily_full's task: a failing preflight writes nothing anywhere and opens no row; a passing one
    publishes the backup id before the export starts, and the result carries its verdict."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the offsite copy's directory should be")
    unusable = LocalStorage(blocker / "backups", name="offsite", medium="object-storage", site="elsewhere")

    def open_storage(target: TargetPolicy) -> Storage:
        return unusable if target.name == "offsite" else world.storages[target.name]

    broken = Resources(world.policy, open_storage, lambda: world.catalog, world.open_database, lambda _: world.ring)
    run = world.run()
    with pytest.raises(WedSyncError, match="offsite"):
        preflight_and_full_backup(broken, run, on_begun=lambda _: pytest.fail("no row may be opened"))
    assert world.catalog.get_backup(run.backup_id("full")) is None
    assert not any(keys(world, run.backup_id("full")).values())

    seen: list[tuple[str, str]] = []

    def begun(b: backup.BeginResult) -> None:  # the row is open, nothing exported yet
        seen.append((b.backup_id, world.catalog.get_backup(b.backup_id)["status"]))  # type: ignore[index]
        assert not world.storages["primary"].exists(manifest_key(b.backup_id))

    done = preflight_and_full_backup(world.resources(), run, reason="before the season", on_begun=begun)
    assert seen == [(run.backup_id("full"), "in_progress")]
    assert done.committed.status == "completed" and done.verified == ["primary", "secondary", "offsite"]
    summary = done.as_dict()
    assert summary["backup_id"] == run.backup_id("full") and summary["rule_321"]["compliant"]
    assert world.catalog.get_backup(run.backup_id("full"))["reason"] == "before the season"  # type: ignore[index]


def test_a_replica_failing_mid_export_leaves_no_copy_counted(world: World, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the offsite copy's directory should be")
    broken = LocalStorage(blocker / "backups", name="offsite", medium="object-storage", site="elsewhere")

    def open_storage(target: TargetPolicy) -> LocalStorage:
        return broken if target.name == "offsite" else world.storages[target.name]  # type: ignore[return-value]

    res = Resources(world.policy, open_storage, lambda: world.catalog, world.open_database, lambda _: world.ring)
    run = world.run()
    backup_id = backup.begin(world.resources(), run).backup_id  # preflight passed; the target breaks after it
    with pytest.raises(StorageError, match="offsite"):
        export_verify_commit(res, backup_id, run)
    assert world.catalog.get_backup(backup_id)["status"] == "in_progress"  # type: ignore[index]
    assert not any(s.exists(manifest_key(backup_id)) for s in world.storages.values())
    assert keys(world, backup_id)["primary"] == set()  # the primary's object was aborted with the replica's

    done = export_verify_commit(world.resources(), backup_id, run)  # the retry, the target repaired
    assert done.committed.status == "completed" and done.verified == ["primary", "secondary", "offsite"]


class DamagingStorage(LocalStorage):
    """A target that keeps the first table part it is sent with one byte flipped: a disk or a network that
    corrupts what it was given, after the write reported success."""

    damaged: str | None = None

    def writer(self, key: str):  # type: ignore[no-untyped-def]
        inner = super().writer(key)
        if self.damaged is not None or "/data/" not in key:
            return inner
        self.damaged = key
        commit = inner.commit

        def commit_then_damage() -> None:
            commit()
            data = bytearray(self.get_bytes(key))
            data[len(data) // 2] ^= 0x01
            self.put_bytes(key, bytes(data))

        inner.commit = commit_then_damage  # type: ignore[method-assign]
        return inner


def test_parts_are_read_back_while_the_export_runs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    res, run = world.resources(), world.run()
    backup_id = backup.begin(res, run).backup_id
    with caplog.at_level("INFO", logger="wedsync_backup.verify"):
        done = export_verify_commit(res, backup_id, run)
    parts = sum(len(t.parts) for t in read_manifest(world.storages["primary"], backup_id).tables)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Verified")]
    assert len(said) == 3 and all(f"({parts} of them while the export ran)" in m for m in said), said
    assert done.committed.status == "completed"


def test_a_part_damaged_on_a_replica_is_found_and_nothing_is_counted(world: World, tmp_path: Path) -> None:
    damaging = DamagingStorage(tmp_path / "offsite", name="offsite", medium="object-storage", site="elsewhere")

    def open_storage(target: TargetPolicy) -> Storage:
        return damaging if target.name == "offsite" else world.storages[target.name]

    res = Resources(world.policy, open_storage, lambda: world.catalog, world.open_database, lambda _: world.ring)
    run = world.run()
    backup_id = backup.begin(res, run).backup_id
    with pytest.raises(WedSyncError, match="offsite") as failed:  # a bad checksum, or a header that fails to open
        export_verify_commit(res, backup_id, run)
    assert damaging.damaged is not None and damaging.damaged in str(failed.value)
    row = world.catalog.get_backup(backup_id)
    assert row is not None and row["status"] != "completed"
