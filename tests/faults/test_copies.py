"""Fault matrix rows 3, 4, 8 and 9: a damaged, incomplete, forged or foreign copy, and the keys.

Each is refused with one clear, permanent error naming what is wrong, before or without changing the
restore target; another copy (or the right key) then restores or verifies.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from wedsync_backup.crypto import Keyring, key_id_for
from wedsync_backup.errors import CryptoError, IntegrityError, WedSyncError
from wedsync_backup.export import run_export
from wedsync_backup.manifest import manifest_key
from wedsync_backup.replicate import replicate
from wedsync_backup.repository import read_manifest
from wedsync_backup.restore import restore_backup, target_contents
from wedsync_backup.storage.local import LocalStorage
from wedsync_backup.storage.s3 import S3Storage
from wedsync_backup.verify import verify_copy

from tests.faults.conftest import FaultWorld, conn_json, master_key_text
from tests.faults.helpers import new_backup_id
from tests.fixtures.airflow import fingerprint


def _private_s3_copy(world: FaultWorld) -> S3Storage:
    """A verified copy of the shared backup on S3 under its own prefix, to damage without harming others."""
    m, (primary, secondary, _) = world.backup, world.targets
    assert isinstance(secondary, S3Storage)
    copy = S3Storage(
        secondary.client, secondary.bucket, f"damaged-{uuid.uuid4().hex[:6]}", name="secondary", medium="s3", site="b"
    )
    replicate(m, primary, copy)
    copy.put_bytes(manifest_key(m.backup_id), m.to_bytes())
    assert verify_copy(m, copy, world.ring).verified
    return copy


def test_flipped_byte_and_deleted_object_are_refused_and_another_copy_restores(world: FaultWorld) -> None:
    m = world.backup
    copy = _private_s3_copy(world)
    victim = max(m.objects(), key=lambda o: o.stored_bytes).key
    target_db = world.new_db("r3")
    target = world.target(target_db)

    # row 3: one byte flipped after the copy was verified
    data = bytearray(copy.get_bytes(victim))
    data[len(data) // 2] ^= 0x01
    copy.put_bytes(victim, bytes(data))
    with pytest.raises(WedSyncError) as flipped:
        restore_backup(read_manifest(copy, m.backup_id), copy, world.ring, target)
    assert victim in str(flipped.value) and not flipped.value.transient, flipped.value
    assert target_contents(target) == []

    # row 4: the object deleted: refused before the target is touched
    copy.delete([victim])
    with pytest.raises(IntegrityError, match="missing") as deleted:
        restore_backup(read_manifest(copy, m.backup_id), copy, world.ring, target)
    assert victim in str(deleted.value) and "another target" in str(deleted.value)
    assert target_contents(target) == []

    # another copy restores the same database
    offsite = world.targets[2]
    restore_backup(read_manifest(offsite, m.backup_id), offsite, world.ring, target)
    assert fingerprint(world.cluster.dsn(target_db)) == fingerprint(world.cluster.dsn(world.source_db))


def test_tampered_and_foreign_manifests_are_refused(world: FaultWorld) -> None:
    m = world.backup
    copy = LocalStorage(world.base / f"r9-{uuid.uuid4().hex[:6]}", name="primary", medium="disk", site="a")
    replicate(m, world.targets[0], copy)
    target = world.target(world.new_db("r9"))

    # a manifest edited after the backup wrote it (one more row promised)
    body = json.loads(m.to_bytes())
    body["tables"][0]["row_count"] += 1
    copy.put_bytes(manifest_key(m.backup_id), json.dumps(body).encode())
    with pytest.raises(IntegrityError, match="failed authentication") as tampered:
        restore_backup(read_manifest(copy, m.backup_id), copy, world.ring, target)
    assert not tampered.value.transient
    with pytest.raises(IntegrityError, match="failed authentication"):
        verify_copy(read_manifest(copy, m.backup_id), copy, world.ring)

    # a genuine manifest copied into another backup's folder: it must not pass for that backup
    other = new_backup_id()
    copy.put_bytes(manifest_key(other), m.to_bytes())
    with pytest.raises(IntegrityError) as foreign:
        restore_backup(read_manifest(copy, other), copy, world.ring, target)
    assert other in str(foreign.value) and m.backup_id in str(foreign.value)
    assert target_contents(target) == []


def test_wrong_master_key_and_a_rotated_key_set(world: FaultWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    from wedsync_airflow.connections import keyring

    m, primary = world.backup, world.targets[0]
    old_id = key_id_for(world.master_key)
    target = world.target(world.new_db("r8"))

    # a wrong key: refused at once, naming the key the backup needs; nothing is restored
    wrong = Keyring(os.urandom(32), source="backup_encryption")
    with pytest.raises(CryptoError, match=old_id) as e:
        restore_backup(m, primary, wrong, target)
    assert not e.value.transient and "previous_keys" in str(e.value)
    assert target_contents(target) == []

    # rotation: the new key is active, the old one in previous_keys, read from the Airflow connection
    new_key = os.urandom(32)
    monkeypatch.setenv(
        "AIRFLOW_CONN_BACKUP_ENCRYPTION",
        conn_json(
            conn_type="generic",
            password=master_key_text(new_key),
            extra={"previous_keys": [master_key_text(world.master_key)]},
        ),
    )
    rotated = keyring("backup_encryption")
    assert rotated.active_id == key_id_for(new_key)
    assert verify_copy(m, world.targets[2], rotated, deep=True).verified  # old backups still decrypt
    fresh = run_export(world.source, primary, rotated, backup_id=new_backup_id())
    assert fresh.encryption["key_id"] == key_id_for(new_key)  # new backups use the new key
    assert verify_copy(fresh, primary, Keyring(new_key), deep=True).verified
    with pytest.raises(CryptoError, match=old_id):
        verify_copy(m, primary, Keyring(new_key))  # without previous_keys the old backup names its key
