"""The catalog rebuild: from any one target into an empty or damaged catalog, losing nothing the manifests
carry (figures, run, creator, reason, the 3-2-1 verdict, warnings, retention, replicas, stats, chains)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from wedsync_backup.catalog import Catalog
from wedsync_backup.commands import backup, rebuild
from wedsync_backup.manifest import manifest_key
from wedsync_backup.policy import Rule321Policy

from tests.wedsync_backup.commands.conftest import World
from tests.wedsync_backup.commands.test_incremental import hourly

# Columns that say when the catalog itself was written, not what the backup is.
WRITE_TIMES = {"started_at", "completed_at", "updated_at", "last_tested"}


def snapshot(cat: Catalog) -> dict[str, Any]:
    with cat.connect() as conn:
        ops = conn.execute("SELECT * FROM backup_operations ORDER BY backup_id").fetchall()
        return {
            "backup_operations": [{k: v for k, v in r.items() if k not in WRITE_TIMES} for r in ops],
            "backup_replicas": conn.execute(
                "SELECT backup_id, target_name, kind, medium, site, location, stored_bytes, object_count,"
                " manifest_sha256, verified FROM backup_replicas ORDER BY 1, 2"
            ).fetchall(),
            "backup_table_stats": conn.execute("SELECT * FROM backup_table_stats ORDER BY 1, 2, 3").fetchall(),
            "recovery_points": conn.execute(
                "SELECT backup_id, recovery_timestamp, wal_position, transaction_id, chain, point_type"
                " FROM recovery_points ORDER BY backup_id"
            ).fetchall(),
        }


def test_rebuild_into_an_empty_then_a_damaged_catalog(world: World) -> None:
    # A set-up that breaks 3-2-1 but runs anyway: its verdict and warning must survive the rebuild.
    lax = dataclasses.replace(world.policy, rule_321=Rule321Policy(min_copies=4, enforce=False))
    full = world.full_backup(world.resources(lax), reason="quarterly audit")
    world.write("INSERT INTO public.users (email) VALUES ('late@example.com')")
    plan, _ = hourly(world)
    before = snapshot(world.catalog)
    row = next(r for r in before["backup_operations"] if r["backup_id"] == full)
    assert row["rule_321"]["compliant"] is False and "3-2-1 rule NOT met" in row["warnings"][0]
    assert row["reason"] == "quarterly audit" and row["retention_until"] is not None

    # The catalog database is lost: a new, empty one.
    world.cluster.psql("-c", f'DROP DATABASE "{world.catalog_db}" WITH (FORCE)')
    world.cluster.create_database(world.catalog_db)
    report = rebuild.rebuild_catalog(world.resources(), "offsite", world.run("catalog_rebuild"))
    assert report.found == 2 and report.rebuilt == [full, plan.backup_id] and report.skipped == {}
    assert snapshot(world.catalog) == before

    # Damaged: a replica row, the stats and the incremental's row gone, the full's warnings wiped.
    with world.catalog.connect() as conn:
        conn.execute("DELETE FROM backup_operations WHERE backup_id = %s", (plan.backup_id,))
        conn.execute("DELETE FROM backup_replicas WHERE target_name = 'secondary'")
        conn.execute("DELETE FROM backup_table_stats")
        conn.execute("UPDATE backup_operations SET warnings = '[]'")
    again = rebuild.rebuild_catalog(world.resources(), "primary", world.run("catalog_rebuild"))
    assert again.rebuilt == [full, plan.backup_id]
    assert snapshot(world.catalog) == before

    # The next backup and restore work on the rebuilt catalog.
    world.write("INSERT INTO public.users (email) VALUES ('after@example.com')")
    hourly(world)


def test_a_damaged_copy_is_not_recorded_as_verified(world: World) -> None:
    full = world.full_backup()
    secondary = world.storages["secondary"]
    key = next(o.key for o in secondary.list(f"backups/{full}/data/"))
    secondary.put_bytes(key, b"not the ciphertext")
    world.cluster.psql("-c", f'DROP DATABASE "{world.catalog_db}" WITH (FORCE)')
    world.cluster.create_database(world.catalog_db)
    report = rebuild.rebuild_catalog(world.resources(), "primary", world.run("catalog_rebuild"))
    assert report.rebuilt == [] and "replica 'secondary' is not verified" in report.skipped[full]
    assert world.catalog.get_backup(full) is None  # never a completed row for a copy that does not verify
    # after a repair (replicate again), the rebuild records it
    sha = backup.load_pending_manifest(world.resources(), full, _sha(world, full)).sha256()
    backup.replicate(world.resources(), full, sha, "secondary")
    assert rebuild.rebuild_catalog(world.resources(), "primary", world.run("catalog_rebuild")).rebuilt == [full]


def _sha(world: World, backup_id: str) -> str:
    return hashlib.sha256(world.storages["primary"].get_bytes(manifest_key(backup_id))).hexdigest()


def test_rebuild_of_an_empty_repository(world: World) -> None:
    """An empty repository rebuilds to an empty (migrated) catalog, and says so."""
    report = rebuild.rebuild_catalog(world.resources(), "secondary", world.run("catalog_rebuild"))
    assert report.found == 0 and report.rebuilt == []
    assert world.catalog.list_completed() == []
