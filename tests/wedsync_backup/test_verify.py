"""Verify one copy on each real target (local dir, S3 over moto, GCS emulator); every fault names its object."""

from __future__ import annotations

import dataclasses
import os

import pytest
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import CryptoError, IntegrityError, WedSyncError
from wedsync_backup.export import run_export
from wedsync_backup.manifest import Manifest, StoredObject
from wedsync_backup.replicate import replicate
from wedsync_backup.storage.base import Storage
from wedsync_backup.verify import verify_copy

from devstack.postgres import Cluster
from tests.fixtures.storage import StorageTargets
from tests.wedsync_backup.test_export import (
    flip_body_byte,
    pg_target,
    source_db,  # noqa: F401 - fixture
)

Backup = tuple[Manifest, StorageTargets, Keyring]


@pytest.fixture
def backup(
    pg_cluster: Cluster,
    source_db: str,  # noqa: F811
    storage_targets: StorageTargets,
) -> Backup:
    """A backup exported to the primary and replicated to the secondary and offsite targets."""
    ring = Keyring(os.urandom(32))
    m = run_export(pg_target(pg_cluster, source_db), storage_targets.primary, ring, backup_id="full-v")
    for dst in storage_targets[1:]:
        replicate(m, storage_targets.primary, dst)
    return m, storage_targets, ring


def largest(m: Manifest) -> StoredObject:
    """The biggest data object (several encrypted chunks)."""
    return max((p for t in m.tables for p in t.parts), key=lambda o: o.stored_bytes)


def test_every_copy_verifies(backup: Backup) -> None:
    m, targets, ring = backup
    for store in targets:
        for deep in (False, True):
            r = verify_copy(m, store, ring, deep=deep)
            assert r.verified and not r.errors
            assert r.target_name == store.name and r.kind == store.kind
            assert (r.medium, r.site) == (store.medium, store.site)
            assert r.object_count == len(m.objects())
            assert r.stored_bytes == m.stored_bytes
            assert m.backup_id in r.location
    assert [verify_copy(m, s, ring).kind for s in targets] == ["local", "s3", "gcs"]


def _damage(store: Storage, key: str, how: str) -> None:
    if how == "missing":
        store.delete([key])
        return
    data = store.get_bytes(key)
    store.put_bytes(key, data[:-7] if how == "truncated" else flip_body_byte(data))


@pytest.mark.parametrize("how", ["truncated", "flipped", "missing"])
def test_damage_is_found_and_named_on_every_target(backup: Backup, how: str) -> None:
    m, targets, ring = backup
    objects = [largest(m), m.schema_object, m.tables[-1].parts[0]]
    for store, obj in zip(targets, objects, strict=True):
        _damage(store, obj.key, how)
        for deep in (False, True):
            expected = CryptoError if how == "flipped" else IntegrityError
            with pytest.raises(expected) as e:
                verify_copy(m, store, ring, deep=deep)
            assert obj.key in str(e.value), f"{store.name}: {e.value}"
            assert e.value.fix
            if how == "missing":
                assert "missing" in str(e.value)


def test_checksum_mismatch_is_found(backup: Backup) -> None:
    """A copy that decrypts but is not the one the manifest recorded (e.g. a stale object)."""
    m, targets, ring = backup
    obj = largest(m)
    stale = dataclasses.replace(obj, stored_sha256="0" * 64)
    m2 = Manifest.from_dict(m.to_dict())
    for t in m2.tables:
        t.parts = [stale if p.key == obj.key else p for p in t.parts]
    # re-sign, as the edit would otherwise fail the manifest's MAC before any object is read
    m2.mac = ring.unwrap(m.encryption["wrapped_key"], m.backup_id).mac(m2.body_bytes())
    with pytest.raises(IntegrityError, match=rf"{obj.key}.*wrong checksum"):
        verify_copy(m2, targets.secondary, ring)
    with pytest.raises(IntegrityError, match=rf"{obj.key}.*stored checksum"):
        verify_copy(m2, targets.offsite, ring, deep=True)


def test_edited_manifest_is_refused(backup: Backup) -> None:
    m, targets, ring = backup
    edited = Manifest.from_dict(m.to_dict())
    edited.tables[0].row_count += 1
    with pytest.raises(IntegrityError, match="failed authentication"):
        verify_copy(edited, targets.primary, ring)


def test_damaged_object_header_is_named(backup: Backup) -> None:
    m, targets, ring = backup
    obj = m.schema_object
    data = targets.primary.get_bytes(obj.key)
    # flip one bit inside the wrapped key's ciphertext in the clear-text header
    i = data.index(b'"ciphertext": "') + len(b'"ciphertext": "') + 4
    targets.primary.put_bytes(obj.key, data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    with pytest.raises(WedSyncError) as e:
        verify_copy(m, targets.primary, ring)
    assert obj.key in str(e.value)
