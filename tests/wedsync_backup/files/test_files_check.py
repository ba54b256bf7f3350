"""The scrub and the restore drill re-read the shared content store (real local, moto S3 and GCS emulator
targets, real corrupted and deleted objects)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from wedsync_backup.alerts import Alert
from wedsync_backup.drill import DrillRequest, run_drill
from wedsync_backup.files.check import read_back, rotating_window
from wedsync_backup.files.content import CONTENT_PREFIX
from wedsync_backup.scrub import MB, run_scrub

from tests.fixtures.backups import corrupt
from tests.wedsync_backup.files.conftest import FilesWorld
from tests.wedsync_backup.test_export import pg_target


def _scrub(fw: FilesWorld, inbox: list[Alert]) -> dict:
    w = fw.world
    result = run_scrub(
        w.catalog,
        w.storages,
        w.ring,
        cycle_days=7,
        budget_bytes=1024 * MB,
        now=datetime.now(UTC),
        notify=inbox.append,
        tested_by="pytest",
        content_sample=10,
    )
    return result.as_dict()["contents"]


def _content_keys(fw: FilesWorld) -> list[str]:
    return sorted(o.key for o in fw.world.storages["primary"].list(CONTENT_PREFIX))


def test_rotating_window_covers_everything_in_turns() -> None:
    items = list(range(10))
    seen = [x for turn in range(4) for x in rotating_window(items, 3, turn)]
    assert set(seen) == set(items) and len(rotating_window(items, 3, 7)) == 3
    assert rotating_window(items, 20, 5) == items


def test_scrub_reads_back_content_objects_and_repairs_damaged_copies(files_world: FilesWorld) -> None:
    fw = files_world
    fw.seed(3)
    fw.backup()
    storages = fw.world.storages
    bitrot, gone = _content_keys(fw)[:2]
    corrupt(storages["secondary"], bitrot)  # same size: only reading it back finds it
    storages["offsite"].delete([gone])

    inbox: list[Alert] = []
    contents = _scrub(fw, inbox)
    assert contents["contents"] == 3 and contents["lost"] == []
    assert len(contents["findings"]) == 2
    assert any(bitrot in f and "secondary" in f for f in contents["findings"])
    assert any(gone in f and "offsite" in f and "missing" in f for f in contents["findings"])
    assert len(contents["repaired"]) == 2 and not inbox
    for o in fw.world.catalog.contents():  # every copy reads back intact again
        for s in storages.values():
            read_back(s, o, fw.world.ring)
    assert _scrub(fw, inbox)["findings"] == []

    for s in storages.values():  # the same object damaged everywhere: lost, and said loudly
        corrupt(s, bitrot)
    contents = _scrub(fw, inbox)
    assert contents["lost"] == [bitrot] and contents["repaired"] == []
    assert [a.event for a in inbox] == ["files_content_lost"] and bitrot in inbox[0].text()


def test_drill_reads_back_the_backups_files_and_fails_naming_a_corrupt_one(files_world: FilesWorld) -> None:
    fw = files_world
    originals = fw.seed(3)
    backup_id = fw.backup()
    w = fw.world

    def drill(key: str):  # type: ignore[no-untyped-def]
        return run_drill(
            w.catalog,
            w.storages,
            w.ring,
            pg_target(w.cluster, "postgres", "drill_target"),
            DrillRequest(trigger="manual", backup_id=backup_id, from_target="offsite"),
            queries=[],
            run_key=key,
            tested_by="pytest",
            notify=inbox.append,
            rng=random.Random(1),
        )

    inbox: list[Alert] = []
    good = drill("files-drill-1")
    assert good.passed and good.files_checked == 3, good.problems

    bad = _content_keys(fw)[0]
    corrupt(w.storages["offsite"], bad)
    failed = drill("files-drill-2")
    assert not failed.passed and failed.data_loss_detected
    [problem] = failed.problems
    assert bad in problem and "offsite" in problem
    assert any(path in problem for path in originals)
    assert [a.event for a in inbox] == ["drill_failed"]
