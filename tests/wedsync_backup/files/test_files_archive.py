"""The weekly archive carries the files: its manifest lists the file state, its content objects are on every
archive target, and retention keeps them while the archive is kept (real targets over the wire)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from wedsync_backup.archive import archive_setup, run_archive
from wedsync_backup.assurance_policy import load_assurance
from wedsync_backup.commands import files_backup
from wedsync_backup.commands.backup import export_options
from wedsync_backup.commands.files_restore import files_state, restore_files, target_bucket
from wedsync_backup.commands.prune import prune
from wedsync_backup.repository import committed_manifests, read_manifest

from tests.wedsync_backup.files.conftest import FilesWorld


def test_the_archive_lists_the_files_and_keeps_their_contents_through_retention(files_world: FilesWorld) -> None:
    fw = files_world
    originals = fw.seed(3)
    daily = fw.backup()
    late = fw.seed(1, start=3)  # a photo only the archive will list
    policy, archive = fw.res.policy, load_assurance().archive
    verdict, warnings = archive_setup(policy, archive)
    storages = [fw.world.storages[name] for name in archive.targets]
    now = datetime.now(UTC)
    result = run_archive(
        fw.world.catalog,
        fw.res.source(),
        storages,
        fw.world.ring,
        backup_id="archive-20261129T030000Z-files",
        archive=archive,
        options=export_options(policy),
        verdict=verdict,
        warnings=warnings,
        now=now,
        actor="pytest",
        files=files_backup.files_world(fw.res),
    )
    archive_id = result["backup_id"]
    m = read_manifest(storages[-1], archive_id)
    assert m.files is not None and (m.files.objects, m.files.new_objects, m.files.problems) == (4, 1, [])
    row = fw.world.catalog.get_backup(archive_id)
    assert row["status"] == "completed" and "files" in row["components_backed_up"]
    assert all(fw.contents(s.name) == 4 for s in storages)

    # the photo goes from the platform; the fulls age out (the newest is always kept); the archive (a year)
    # keeps the content object only it lists
    [late_path] = late
    fw.world.write("DELETE FROM public.files WHERE storage_path = %(p)s", {"p": late_path})
    fw.delete(late_path)
    newest = fw.backup()
    later = now + timedelta(days=policy.tiers["full"].retention_days + 5)
    prune(fw.res, now=later)
    kept = {m.backup_id for m in committed_manifests(storages[0])}
    assert daily not in kept and {newest, archive_id} <= kept
    assert all(fw.contents(s.name) == 4 for s in storages)

    _, chosen, state = files_state(fw.res, backup_id=archive_id, from_target="offsite")
    assert chosen.backup_id == archive_id and len(state) == 4
    for path in originals:
        fw.delete(path)
    done = restore_files(fw.res, target_bucket(fw.res, None, fw.bucket), backup_id=archive_id, from_target="offsite")
    assert done["written"] == 4
    assert all(fw.get(p) == data for p, data in {**originals, **late}.items())
