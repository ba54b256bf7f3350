"""Key rotation on real targets: after it, the retired master key can go and every backup still restores;
an interrupted rotation resumes to the same end; a missing key is refused, named, before anything changes."""

from __future__ import annotations

import hashlib
import os

import pytest
from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring, key_id_for
from wedsync_backup.errors import ConfigError
from wedsync_backup.manifest import manifest_key
from wedsync_backup.repository import read_manifest
from wedsync_backup.restore import restore_backup
from wedsync_backup.rotation import record_rotation_run, rotate_keys
from wedsync_backup.verify import verify_copy

from devstack.postgres import Cluster
from tests.fixtures.airflow import assert_same_database
from tests.fixtures.backups import commit_backup
from tests.fixtures.storage import StorageTargets
from tests.wedsync_backup.test_export import pg_target, source_db  # noqa: F401 - fixture

OLD, NEW = os.urandom(32), os.urandom(32)


class Interrupted(Exception):
    pass


def manifests(targets: StorageTargets, backup_id: str) -> set[bytes]:
    return {s.get_bytes(manifest_key(backup_id)) for s in targets}


def test_rotation_dry_run_refusal_interruption_resume_and_restore_with_the_new_key_only(
    module_catalog: Catalog,
    module_targets: StorageTargets,
    pg_cluster: Cluster,
    source_db: str,  # noqa: F811
    empty_db: str,
) -> None:
    cat, targets = module_catalog, module_targets
    storages = {s.name: s for s in targets}
    source = pg_target(pg_cluster, source_db)
    ids = [commit_backup(cat, targets, source, Keyring(OLD), f"full-rot-{i}").backup_id for i in (1, 2)]
    before = {b: manifests(targets, b) for b in ids}

    # without the old key the rotation is refused, naming it, and nothing changes
    with pytest.raises(ConfigError, match=rf"needs master key\(s\) {key_id_for(OLD)}.*full-rot-1, full-rot-2"):
        rotate_keys(cat, storages, Keyring(NEW), dry_run=False, actor="pytest", reason="test")
    ring = Keyring(NEW, [OLD])
    dry = rotate_keys(cat, storages, ring, dry_run=True, actor="pytest", reason="test")
    assert dry.to_rotate == {b: ["primary", "secondary", "offsite"] for b in ids} and not dry.rotated
    assert {b: manifests(targets, b) for b in ids} == before

    # interrupted after the first copy of the first backup
    def crash(backup_id: str, target: str) -> None:
        raise Interrupted(f"{backup_id} on {target}")

    with pytest.raises(Interrupted):
        rotate_keys(cat, storages, ring, dry_run=False, actor="pytest", reason="test", on_copy_rotated=crash)
    first = targets.primary.get_bytes(manifest_key(ids[0]))
    assert len(manifests(targets, ids[0])) == 2  # one copy rotated, two not yet

    resumed = rotate_keys(cat, storages, ring, dry_run=False, actor="pytest", reason="test")
    assert resumed.rotated == {ids[0]: ["secondary", "offsite"], ids[1]: ["primary", "secondary", "offsite"]}
    assert manifests(targets, ids[0]) == {first}  # the interrupted run's manifest, reused everywhere
    again = rotate_keys(cat, storages, ring, dry_run=False, actor="pytest", reason="test")
    assert not again.to_rotate and sorted(again.already) == ids

    # the old key removed: every copy of every backup verifies, and restores
    only_new = Keyring(NEW)
    for b in ids:
        [data] = manifests(targets, b)
        row = cat.get_backup(b)
        assert row["checksum"] == hashlib.sha256(data).hexdigest() and row["key_id"] == key_id_for(NEW)
        assert {r["manifest_sha256"] for r in row["replicas"]} == {row["checksum"]}
        for store in targets:
            assert verify_copy(read_manifest(store, b), store, Keyring(NEW)).verified
    for b, store, db in zip(ids, (targets.secondary, targets.offsite), (empty_db, f"{empty_db}_2"), strict=True):
        pg_cluster.create_database(db, drop=True)
        restore_backup(read_manifest(store, b), store, only_new, pg_target(pg_cluster, db, "restore_target"))
        assert_same_database(pg_cluster, source_db, db)
    pg_cluster.psql("-c", f'DROP DATABASE "{empty_db}_2"')


def test_each_rotation_run_is_recorded_once(module_catalog: Catalog) -> None:
    run = {"active_key_id": key_id_for(NEW), "dry_run": False, "reason": "INC-7", "triggered_by": "admin"}
    record_rotation_run(module_catalog, **run, dag_id="rotate_keys", run_id="r1")
    record_rotation_run(
        module_catalog, **run, dag_id="rotate_keys", run_id="r1", result={"rotated": {"b": ["primary"]}}
    )
    with module_catalog.connect() as conn:
        [row] = conn.execute("SELECT * FROM key_rotations WHERE run_id = 'r1'").fetchall()
    assert row["result"] == {"rotated": {"b": ["primary"]}} and row["completed_at"] and row["reason"] == "INC-7"
