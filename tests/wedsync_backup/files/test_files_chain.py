"""The files component along a chain: the hourly incremental's delta, and retention of the content store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from wedsync_backup.commands import incremental
from wedsync_backup.commands.files_restore import files_state, restore_files, target_bucket
from wedsync_backup.commands.prune import prune
from wedsync_backup.commands.rebuild import rebuild_catalog
from wedsync_backup.files.content import content_key
from wedsync_backup.repository import read_manifest

from tests.wedsync_backup.files.conftest import FilesWorld


def test_the_hourly_incremental_captures_what_changed(files_world: FilesWorld) -> None:
    fw = files_world
    originals = fw.seed(3)
    full = fw.backup()
    kept, changed, removed = sorted(originals)
    fw.put(changed, b"%PDF-1.4 signed version", 2)
    fw.put("weddings/1/photos/new.png", b"\x89PNG new photo", 1)
    fw.world.write("DELETE FROM public.files WHERE storage_path = %s", (removed,))

    run = fw.world.run("backup_hourly_incremental")
    plan = incremental.begin(fw.res, run)
    captured = incremental.capture(fw.res, plan.backup_id, plan, run)
    fw.world.copy_and_commit(fw.res, plan.backup_id, captured.manifest_sha256, tier="incremental")

    m = read_manifest(fw.world.storages["primary"], plan.backup_id)
    assert m.files is not None and m.files.delta_of == full
    assert (m.files.changed, m.files.new_objects, m.files.objects) == (3, 2, 3)
    _, _, state = files_state(fw.res)
    assert sorted(state) == sorted([kept, changed, "weddings/1/photos/new.png"])
    fw.delete(changed)
    assert restore_files(fw.res, target_bucket(fw.res, None, fw.bucket))["written"] == 1
    assert fw.get(changed) == b"%PDF-1.4 signed version"

    # a catalog rebuilt from the repository knows which backups hold files again
    with fw.world.catalog.connect() as conn:
        conn.execute("DELETE FROM backup_files")
        conn.execute("UPDATE backup_operations SET components_backed_up = '[\"database\"]'")
    rebuild_catalog(fw.res, "secondary", fw.world.run("catalog_rebuild"))
    assert fw.world.catalog.files_capture(plan.backup_id)["delta_of"] == full  # type: ignore[index]
    assert "files" in fw.world.catalog.get_backup(full)["components_backed_up"]  # type: ignore[index]


def test_retention_removes_only_unreferenced_content(files_world: FilesWorld) -> None:
    fw = files_world
    originals = fw.seed(3)
    fw.backup()
    replaced = sorted(originals)[0]
    fw.put(replaced, b"%PDF-1.4 version two", 1)
    newest = fw.backup()
    assert {fw.contents(n) for n in fw.world.storages} == {4}

    result = prune(fw.res, now=datetime.now(UTC) + timedelta(days=31))
    assert all(ids and newest not in ids for ids in result.pruned.values())
    old = content_key(hashlib.sha256(originals[replaced]).hexdigest())
    for name, storage in fw.world.storages.items():
        assert fw.contents(name) == 3, name
        assert not storage.exists(old)
    fw.delete(replaced)
    for p in originals:
        fw.delete(p)
    assert restore_files(fw.res, target_bucket(fw.res, None, fw.bucket))["written"] == 3
    assert fw.get(replaced) == b"%PDF-1.4 version two"
