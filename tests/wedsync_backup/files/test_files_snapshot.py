"""The file state is read in the database export's snapshot: a files row committed after the export's snapshot
but before the files are read is in neither the backup's tables nor its file state (the next backup has both)."""

from __future__ import annotations

import pytest
from wedsync_backup.commands.files_backup import held_snapshot
from wedsync_backup.commands.files_restore import files_state
from wedsync_backup.files.source import ExportSnapshot, file_rows
from wedsync_backup.repository import read_manifest

from devstack.files_seed import object_for
from tests.wedsync_backup.files.conftest import FilesWorld

LATE = "weddings/2/photos/IMG_late.jpg"


def _files_rows(fw: FilesWorld, backup_id: str) -> int:
    m = read_manifest(fw.world.storages["primary"], backup_id)
    return next(t.row_count for t in m.tables if (t.schema, t.name) == ("public", "files"))


def test_a_row_committed_after_the_snapshot_is_in_neither(
    files_world: FilesWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    fw = files_world
    fw.seed(3)
    attach = ExportSnapshot.attach
    committed: list[str] = []

    def attach_then_commit(self: ExportSnapshot, snapshot: str) -> None:
        attach(self, snapshot)
        if not committed:  # the platform uploads a photo right after the export took its snapshot
            fw.put(LATE, object_for(LATE), 2)
            committed.append(snapshot)

    monkeypatch.setattr(ExportSnapshot, "attach", attach_then_commit)
    first = fw.backup()
    assert committed, "the export never handed its snapshot over"
    _, _, state = files_state(fw.res, backup_id=first)
    assert _files_rows(fw, first) == 3 and len(state) == 3 and LATE not in state

    second = fw.backup()
    _, _, state = files_state(fw.res, backup_id=second)
    assert _files_rows(fw, second) == 4 and LATE in state and state[LATE].status == "ok"


def test_a_held_snapshot_is_imported_and_a_released_one_falls_back_to_now(files_world: FilesWorld) -> None:
    """The wedding seal's path: the run's snapshot is imported before its holder is released."""
    fw = files_world
    fw.seed(2)
    source, files = fw.res.source(), fw.res.policy.files
    with source.connect(autocommit=False) as holder:
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        snap = holder.execute("SELECT pg_export_snapshot()").fetchone()[0]
        held = held_snapshot(fw.res, snap)
    assert held is not None and held.conn is not None  # imported while held; the holder is gone now
    fw.put(LATE, object_for(LATE), 2)
    try:
        assert [r.path for r in file_rows(source, files, snapshot=held)] == sorted(fw_paths(fw))
    finally:
        held.close()
    gone = held_snapshot(fw.res, snap)  # a retried seal: the holder released it already
    assert gone is not None and gone.conn is None
    assert LATE in [r.path for r in file_rows(source, files, snapshot=gone)]


def fw_paths(fw: FilesWorld) -> list[str]:
    return [p for p in (o["Key"] for o in fw.s3.client().list_objects_v2(Bucket=fw.bucket)["Contents"]) if p != LATE]
