"""The file state is read in the database export's snapshot: a files row committed after the export's snapshot
but before the files are read is in neither the backup's tables nor its file state (the next backup has both)."""

from __future__ import annotations

import pytest
from wedsync_backup.commands.files_restore import files_state
from wedsync_backup.files.source import ExportSnapshot
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
