"""Replication between real targets: complete, idempotent, and never lands a damaged object."""

from __future__ import annotations

import os

import pytest
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.export import run_export
from wedsync_backup.manifest import Manifest
from wedsync_backup.replicate import replicate
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
    ring = Keyring(os.urandom(32))
    m = run_export(pg_target(pg_cluster, source_db), storage_targets.primary, ring, backup_id="full-rep")
    return m, storage_targets, ring


def test_copies_everything_then_skips_everything(backup: Backup) -> None:
    m, targets, ring = backup
    keys = {o.key for o in m.objects()}
    for dst in targets[1:]:
        first = replicate(m, targets.primary, dst)
        assert (first.target, first.copied, first.skipped) == (dst.name, len(keys), 0)
        assert first.bytes_copied == m.stored_bytes
        assert {o.key for o in dst.list(f"backups/{m.backup_id}/")} == keys
        for o in m.objects():
            assert dst.get_bytes(o.key) == targets.primary.get_bytes(o.key)
        again = replicate(m, targets.primary, dst)
        assert (again.copied, again.skipped, again.bytes_copied) == (0, len(keys), 0)
        assert verify_copy(m, dst, ring).verified
    # replication moves ciphertext only: it can chain from a replica without the key
    chained = replicate(m, targets.secondary, targets.offsite, skip_verified=False)
    assert chained.copied == len(keys)


def test_a_damaged_replica_is_copied_again(backup: Backup) -> None:
    m, targets, ring = backup
    replicate(m, targets.primary, targets.secondary)
    obj = m.tables[0].parts[0]
    targets.secondary.put_bytes(obj.key, flip_body_byte(targets.secondary.get_bytes(obj.key)))  # same size
    r = replicate(m, targets.primary, targets.secondary)
    assert (r.copied, r.skipped) == (1, len(m.objects()) - 1)
    assert verify_copy(m, targets.secondary, ring).verified


@pytest.mark.parametrize("dst_name", ["secondary", "offsite"])
def test_damaged_source_object_never_lands(backup: Backup, dst_name: str) -> None:
    m, targets, _ = backup
    dst = getattr(targets, dst_name)
    bad = max((p for t in m.tables for p in t.parts), key=lambda o: o.stored_bytes)
    path = targets.primary.root / bad.key  # type: ignore[attr-defined]
    path.write_bytes(flip_body_byte(path.read_bytes()))
    with pytest.raises(IntegrityError, match=rf"{bad.key}.*{targets.primary.name}") as e:
        replicate(m, targets.primary, dst)
    assert "re-run the backup" in e.value.fix
    assert not dst.exists(bad.key)
    assert bad.key not in {o.key for o in dst.list("")}


def test_truncated_source_object_never_lands(backup: Backup) -> None:
    m, targets, _ = backup
    bad = m.schema_object
    targets.primary.put_bytes(bad.key, targets.primary.get_bytes(bad.key)[:-100])
    with pytest.raises(IntegrityError, match=bad.key):
        replicate(m, targets.primary, targets.offsite)
    assert not targets.offsite.exists(bad.key)
