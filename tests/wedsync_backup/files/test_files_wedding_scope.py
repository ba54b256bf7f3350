"""A wedding backup captures only its weddings' files (issue 9): a scoped capture, which serves those weddings'
restores and never a whole files restore nor the base of a delta."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from wedsync_backup.commands import incremental
from wedsync_backup.commands import wedding_backup as cmd
from wedsync_backup.commands.files_restore import files_state, restore_files, restore_wedding_files, target_bucket
from wedsync_backup.errors import ConfigError
from wedsync_backup.files.state import files_captures, state_at
from wedsync_backup.manifest import Manifest, manifest_key
from wedsync_backup.repository import committed_manifests, read_manifest
from wedsync_backup.weddings.policy import WeddingsPolicy

from tests.wedsync_backup.files.conftest import FilesWorld


def test_a_wedding_backup_captures_only_its_weddings_files(files_world: FilesWorld) -> None:
    files_world.world.write("ALTER TABLE public.weddings ADD COLUMN wedding_date date DEFAULT DATE '2040-06-01'")
    weddings = WeddingsPolicy(data_types={"photos": (("", "files"),)})  # files rows belong by files.wedding_id
    res = replace(files_world.res, policy=replace(files_world.res.policy, weddings=weddings))
    fw = replace(files_world, res=res)
    originals = fw.seed(6)  # two files for each of weddings 1, 2, 3
    full = fw.backup()
    fw.put("weddings/2/photos/after-full.jpg", b"\xff\xd8 wedding 2, after the full backup", 2)
    fw.put("weddings/3/photos/after-full.jpg", b"\xff\xd8 wedding 3, after the full backup", 3)
    fw.put("weddings/2/photos/lost.jpg", b"\xff\xd8 never in the bucket", 2)  # a new row is checked in the bucket
    fw.delete("weddings/2/photos/lost.jpg")

    wedding = cmd.backup_weddings(res, fw.world.run("backup_wedding_now"), wedding_ids=["2"], reason="test")
    primary = fw.world.storages["primary"]
    m = read_manifest(primary, wedding)
    assert m.files is not None and m.files.scope == {"wedding_ids": ["2"]} and not m.files.whole
    manifests = committed_manifests(primary)
    state = state_at(primary, manifests, wedding, fw.world.ring)
    new = ["weddings/2/photos/after-full.jpg", "weddings/2/photos/lost.jpg"]
    wedding_2 = sorted([p for p in originals if p.startswith("weddings/2/")] + new)
    assert sorted(state) == wedding_2 and {e.wedding_id for e in state.values()} == {"2"}
    assert (m.files.objects, m.files.new_objects) == (3, 1)  # wedding 3's new photo is not read, nor stored
    assert [p.split(":")[0] for p in m.files.problems] == ["weddings/2/photos/lost.jpg"]
    assert fw.world.catalog.files_capture(wedding)["scope"] == {"wedding_ids": ["2"]}  # type: ignore[index]
    assert fw.world.catalog.files_capture(full)["scope"] is None  # type: ignore[index]

    # complete and point-in-time files restores take the whole capture, not the newer wedding one
    assert [c.backup_id for c in files_captures(manifests)] == [full]
    assert files_state(fw.res)[1].backup_id == full
    assert files_state(fw.res, until=datetime.now(UTC))[1].backup_id == full
    dry = restore_files(fw.res, target_bucket(fw.res, None, fw.bucket), dry_run=True)
    assert (dry["backup_id"], dry["objects"]) == (full, 6)
    with pytest.raises(ConfigError, match="captured only the files of weddings 2"):
        files_state(fw.res, backup_id=wedding)

    # the next wedding backup asks the bucket only about new or changed rows (the photo the last one captured
    # is not asked for: the hourly and daily whole captures check every object), the missing one again
    fw.delete("weddings/2/photos/after-full.jpg")
    again = cmd.backup_weddings(res, fw.world.run("backup_wedding_now"), wedding_ids=["2"], reason="test")
    m2 = read_manifest(primary, again)
    assert m2.files is not None and (m2.files.objects, m2.files.changed, m2.files.new_objects) == (3, 0, 0)
    assert [p.split(":")[0] for p in m2.files.problems] == ["weddings/2/photos/lost.jpg"]

    # a wedding-only restore of wedding 2 reads its files from its newest wedding backup; wedding 3's from the full
    two = restore_wedding_files(fw.res, ["2"], target_bucket(fw.res, None, fw.bucket))
    assert (two["backup_id"], two["written"]) == (again, 1)
    assert fw.get("weddings/2/photos/after-full.jpg") == b"\xff\xd8 wedding 2, after the full backup"
    assert (
        restore_wedding_files(fw.res, ["3"], target_bucket(fw.res, None, fw.bucket), dry_run=True)["backup_id"] == full
    )

    # the next incremental's delta is against the full backup's whole state, never the wedding backup's
    run = fw.world.run("backup_hourly_incremental")
    plan = incremental.begin(fw.res, run)
    captured = incremental.capture(fw.res, plan.backup_id, plan, run)
    fw.world.copy_and_commit(fw.res, plan.backup_id, captured.manifest_sha256, tier="incremental")
    inc = read_manifest(primary, plan.backup_id)
    assert inc.files is not None and inc.files.delta_of == full and inc.files.whole
    _, chosen, whole = files_state(fw.res)
    assert chosen.backup_id == plan.backup_id and len(whole) == 9  # every wedding's files, the three new rows too

    # a manifest written before the field existed reads as a whole capture
    old = json.loads(primary.get_bytes(manifest_key(full)))
    old["files"].pop("scope", None)
    assert Manifest.from_dict(old).files.whole  # type: ignore[union-attr]
