"""Fault matrix row 12, against the core: the catalog database is dropped; Catalog.rebuild_from_manifests
brings its rows back from the manifests on the targets, and the next backup and a restore work.

(The manual ``catalog_rebuild`` DAG that runs this for a user is branch i8a's; this proves the core it calls.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from wedsync_backup.catalog import Catalog
from wedsync_backup.manifest import Manifest
from wedsync_backup.repository import committed_backup_ids, read_manifest
from wedsync_backup.restore import restore_backup
from wedsync_backup.storage.base import Storage
from wedsync_backup.verify import verify_copy

from tests.faults.conftest import FaultWorld
from tests.faults.helpers import full_backup
from tests.fixtures.airflow import fingerprint


def _replicas(world: FaultWorld, manifest: Manifest) -> list[dict[str, Any]]:
    """Every copy verified now, as the commit step records them."""
    out = []
    for t in world.targets:
        r = verify_copy(manifest, t, world.ring).as_dict()
        r["verified_at"] = datetime.fromisoformat(str(r["verified_at"]))
        r["manifest_sha256"] = manifest.sha256()
        out.append(r)
    return out


def _fresh_catalog(world: FaultWorld, name: str) -> Catalog:
    world.cluster.create_database(name, drop=True)
    cat = Catalog(world.cluster.dsn(name))
    cat.migrate()
    return cat


def test_catalog_dropped_then_rebuilt_from_manifests(world: FaultWorld) -> None:
    name = f"catalog_{world.source_db}"
    cat = _fresh_catalog(world, name)
    m = world.backup
    cat.complete_backup(m, m.sha256(), _replicas(world, m), datetime.now(UTC) + timedelta(days=30))

    cat = _fresh_catalog(world, name)  # the catalog database is lost
    primary: Storage = world.targets[0]
    found = [read_manifest(primary, b) for b in committed_backup_ids(primary)]
    result = cat.rebuild_from_manifests(
        [(f, f.sha256(), _replicas(world, f)) for f in found], retention_days={"full": 30}
    )
    assert m.backup_id in result.rebuilt, result.skipped
    row = cat.get_backup(m.backup_id)
    assert row is not None and row["status"] == "completed" and row["integrity_verified"] is True

    # the next backup is recorded as before, and a restore finds what it needs through the catalog
    nxt = full_backup(world.source, world.targets, world.ring)
    cat.complete_backup(nxt, nxt.sha256(), _replicas(world, nxt), datetime.now(UTC) + timedelta(days=30))
    newest = cat.list_completed("full", limit=1)
    assert newest and newest[0]["backup_id"] == nxt.backup_id
    latest = newest[0]
    target_db = world.new_db("r12")
    offsite = world.targets[2]
    restore_backup(read_manifest(offsite, latest["backup_id"]), offsite, world.ring, world.target(target_db))
    assert fingerprint(world.cluster.dsn(target_db)) == fingerprint(world.cluster.dsn(world.source_db))
    world.cluster.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
