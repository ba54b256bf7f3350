"""The files component end to end: full backups of a real files bucket (moto S3 over the wire) to the three
targets, then restores back into the bucket. Uploads are counted by listing the targets."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace

import pytest
from wedsync_backup.alerts import files_damaged
from wedsync_backup.commands.files_restore import (
    files_state,
    restore_files,
    restore_files_for,
    restore_wedding_files,
    target_bucket,
)
from wedsync_backup.commands.resources import NothingToDo
from wedsync_backup.commands.restore import RestoreRequest
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError
from wedsync_backup.files import capture
from wedsync_backup.files.capture import capture_lock
from wedsync_backup.files.restore import write_objects
from wedsync_backup.repository import read_manifest

from tests.wedsync_backup.files.conftest import FilesWorld


def _restore(fw: FilesWorld, **kw):  # type: ignore[no-untyped-def]
    return restore_files(fw.res, target_bucket(fw.res, None, fw.bucket), **kw)


def test_round_trip_brings_back_deleted_and_corrupted_objects(files_world: FilesWorld) -> None:
    fw = files_world
    originals = fw.seed(6)
    backup_id = fw.backup()

    m = read_manifest(fw.world.storages["secondary"], backup_id)
    assert m.files is not None and m.files.objects == 6 and m.files.new_objects == 6 and not m.files.problems
    row = fw.world.catalog.get_backup(backup_id)
    assert row is not None and "files" in row["components_backed_up"]
    captured = fw.world.catalog.files_capture(backup_id)
    assert captured is not None and (captured["objects"], captured["new_objects"]) == (6, 6)
    assert all(fw.contents(name) == 6 for name in fw.world.storages)

    paths = sorted(originals)
    fw.delete(paths[0])
    fw.delete(paths[1])
    fw.s3.client().put_object(Bucket=fw.bucket, Key=paths[2], Body=b"ransomware was here")

    # emergency_restore's files task: its params, a dry run by default
    req = RestoreRequest(target_conn_id="restore_target", reason="INC-12", from_target="offsite")
    with pytest.raises(NothingToDo):
        restore_files_for(fw.res, req, ["database"])
    with pytest.raises(ConfigError, match="confirm"):
        restore_files_for(fw.res, replace(req, dry_run=False), ["files"], target_files_bucket=fw.bucket)
    dry = restore_files_for(fw.res, req, ["database", "files"], target_files_bucket=fw.bucket)
    assert (dry["objects"], dry["to_write"], dry["written"]) == (6, 3, 0)
    assert dry["bytes_to_write"] == sum(len(originals[p]) for p in paths[:3])
    assert fw.get(paths[0]) is None  # a dry run touches nothing

    done = _restore(fw)
    assert (done["written"], done["skipped"]) == (3, 3)
    assert {p: fw.get(p) for p in paths} == originals
    assert _restore(fw)["written"] == 0  # everything already right: skipped

    # a retired master key strands no photo: the (encrypted) state carries each content object's data key
    _, _, state = files_state(fw.res)
    fw.delete(paths[0])
    other_key = Keyring(os.urandom(32))
    done = write_objects(
        [state[paths[0]]], fw.world.storages["secondary"], target_bucket(fw.res, None, fw.bucket), other_key
    )
    assert done.written == 1 and fw.get(paths[0]) == originals[paths[0]]


def test_second_backup_uploads_only_new_objects(
    files_world: FilesWorld, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fw = files_world
    fw.seed(9)
    monkeypatch.setattr(capture, "PROGRESS_EVERY_S", 0.0)  # a progress line after every object, not every 30 s
    with caplog.at_level(logging.INFO, logger=capture.__name__):
        fw.backup()
    assert "Files: 9 objects checked" in caplog.text and "9 new stored on every target" in caplog.text
    before = {name: fw.contents(name) for name in fw.world.storages}
    assert set(before.values()) == {9}

    fw.seed(1, start=9)
    second = fw.backup()

    m = read_manifest(fw.world.storages["primary"], second)
    assert m.files is not None and (m.files.objects, m.files.new_objects) == (10, 1)
    assert {name: fw.contents(name) for name in fw.world.storages} == {n: 10 for n in fw.world.storages}
    # the same photo under a second path is stored once
    fw.put("weddings/2/photos/copy.jpg", fw.get("weddings/1/photos/IMG_0000.jpg") or b"", 2)
    third = read_manifest(fw.world.storages["primary"], fw.backup())
    assert third.files is not None and (third.files.objects, third.files.new_objects) == (11, 0)


def test_corrupt_source_is_reported_and_the_good_version_kept(files_world: FilesWorld) -> None:
    fw = files_world
    originals = fw.seed(3)
    fw.backup()
    bad, gone = sorted(originals)[:2]
    good = originals[bad]
    fw.s3.client().put_object(Bucket=fw.bucket, Key=bad, Body=bytes(reversed(good)))  # same size, other bytes
    fw.delete(gone)

    second = fw.backup()
    m = read_manifest(fw.world.storages["primary"], second)
    assert m.files is not None and len(m.files.problems) == 2
    assert any(bad in p and "corrupt" in p for p in m.files.problems)
    assert any(gone in p and "missing" in p for p in m.files.problems)
    row = fw.world.catalog.get_backup(second)
    assert row is not None and any(bad in w for w in row["warnings"])
    assert m.files.new_objects == 0  # the corruption was not copied
    alert = files_damaged(backup_id=second, problems=m.files.problems)
    assert alert.event == "files_damaged" and bad in alert.text() and gone in alert.text()

    restored = _restore(fw, backup_id=second)
    assert restored["written"] == 2
    assert fw.get(bad) == good and fw.get(gone) == originals[gone]


def test_point_in_time_brings_back_the_object_as_it_was(files_world: FilesWorld) -> None:
    fw = files_world
    originals = fw.seed(3)
    first = read_manifest(fw.world.storages["primary"], fw.backup())
    path = sorted(originals)[0]
    fw.put(path, b"%PDF-1.4 the edited contract", 1)
    fw.put("weddings/3/photos/late.png", originals[sorted(originals)[1]][:50] + b"late", 3)
    fw.backup()

    assert first.files is not None
    from datetime import datetime

    at_t = _restore(fw, until=datetime.fromisoformat(first.files.captured_at))
    assert at_t["backup_id"] == first.backup_id and at_t["written"] == 1
    assert fw.get(path) == originals[path]

    latest = _restore(fw)
    assert latest["written"] == 1 and fw.get(path) == b"%PDF-1.4 the edited contract"

    # a wedding-only restore writes that wedding's objects only
    fw.delete(path)
    fw.delete("weddings/3/photos/late.png")
    one = restore_wedding_files(fw.res, ["3"], target_bucket(fw.res, None, fw.bucket))
    assert one["written"] == 1 and fw.get(path) is None and fw.get("weddings/3/photos/late.png") is not None

    # emergency_restore's files task follows the restore's scope: a wedding-only restore, that wedding's files
    fw.delete("weddings/3/photos/late.png")
    req = RestoreRequest(target_conn_id="t", reason="INC-12", scope="wedding-only", wedding_ids=["3"])
    dry = restore_files_for(fw.res, req, ["files"], target_files_bucket=fw.bucket)
    assert dry["to_write"] == 1  # wedding 3's missing photo, not wedding 1's missing contract
    selective = RestoreRequest(target_conn_id="t", reason="INC-12", scope="selective", tables=["public.guests"])
    with pytest.raises(NothingToDo, match="no files"):
        restore_files_for(fw.res, selective, ["files"], target_files_bucket=fw.bucket)


def test_captures_take_turns_on_the_content_store(files_world: FilesWorld) -> None:
    """Seen on the stack: the weekly archive and the first full backup stored the same new photo at once, each
    under its own data key, and the archive found the other's ciphertext where it had verified its own. A
    capture waits while another holds the store, then lists it afresh."""
    fw = files_world
    fw.seed(3)
    done: list[str] = []
    with capture_lock(fw.res.source()):
        t = threading.Thread(target=lambda: done.append(fw.backup()))
        t.start()
        t.join(timeout=3)
        assert t.is_alive() and not done  # waiting for the lock, nothing stored yet
        assert {name: fw.contents(name) for name in fw.world.storages} == {n: 0 for n in fw.world.storages}
    t.join(timeout=120)
    assert done and {name: fw.contents(name) for name in fw.world.storages} == {n: 3 for n in fw.world.storages}
