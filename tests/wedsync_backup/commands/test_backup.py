"""The backup command's phases, called directly: begin, export, replicate, verify, commit, mark_failed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from wedsync_backup.commands import backup
from wedsync_backup.commands.resources import NothingToDo
from wedsync_backup.errors import IntegrityError
from wedsync_backup.logical.slot import slot_info, slot_name_for
from wedsync_backup.policy import DEFAULT_POLICY_PATH, load_policy
from wedsync_backup.repository import read_manifest
from wedsync_backup.storage.local import LocalStorage

from tests.wedsync_backup.commands.conftest import World


def test_full_backup_phases(world: World) -> None:
    res = world.resources()
    run = world.run()
    begun = backup.begin(res, run, reason="before the migration")
    assert begun.fresh and begun.all_targets == ["primary", "secondary", "offsite"]
    assert begun.replica_targets == ["secondary", "offsite"]
    assert begun.backup_id == run.backup_id("full") and begun.backup_id.startswith("full-")
    assert world.catalog.get_backup(begun.backup_id)["status"] == "in_progress"  # type: ignore[index]

    exported = backup.export(res, begun.backup_id, run)
    assert exported.tables == 3 and exported.rows == 172 and exported.tables_by_priority["critical"] == 1
    assert slot_info(res.source(), slot_name_for(begun.backup_id)) is not None  # the chain starts here

    with pytest.raises(IntegrityError, match="not verified on primary, secondary, offsite"):
        backup.commit(res, begun.backup_id, exported.manifest_sha256, [])
    assert world.catalog.get_backup(begun.backup_id)["status"] == "in_progress"  # type: ignore[index]

    world.copy_and_commit(res, begun.backup_id, exported.manifest_sha256)
    row = world.catalog.get_backup(begun.backup_id)
    assert row is not None and row["status"] == "completed" and row["integrity_verified"]
    assert row["reason"] == "before the migration" and row["created_by"] == "airflow:backup_daily_full"
    assert row["rule_321"]["compliant"] is True and row["warnings"] == []
    assert [r["target_name"] for r in row["replicas"]] == ["offsite", "primary", "secondary"]
    assert row["secondary_location"].startswith("s3://") and row["offsite_location"].startswith("gs")

    m = read_manifest(world.storages["offsite"], begun.backup_id)
    assert m.provenance is not None and m.provenance.reason == "before the migration"
    assert m.provenance.rule_321 == row["rule_321"] and m.provenance.run_id == run.run_id
    assert m.chain is not None and m.chain.method == "logical" and m.chain.slot == m.point.slot
    assert m.chain.schema_fingerprint and m.extra == {}

    # A retry of every phase changes nothing; a late mark_failed never downgrades a completed backup.
    again = backup.begin(res, run, reason="before the migration")
    assert again.backup_id == begun.backup_id and again.fresh is False
    assert backup.export(res, begun.backup_id, run).manifest_sha256 == exported.manifest_sha256
    world.copy_and_commit(res, begun.backup_id, exported.manifest_sha256)
    assert backup.mark_failed(res, begun.backup_id) is False
    assert world.catalog.get_backup(begun.backup_id)["status"] == "completed"  # type: ignore[index]


def test_mark_failed(world: World) -> None:
    res = world.resources()
    with pytest.raises(NothingToDo, match="Preflight failed"):
        backup.mark_failed(res, "None")
    run = world.run()
    # the run's own id (as backup_daily_full's mark_failed makes it) before any preflight ran: the catalog has
    # no tables yet (its migrations are the preflight's first step)
    with pytest.raises(NothingToDo, match="Preflight failed"):
        backup.mark_failed(res, run.backup_id("full"))
    backup.begin(res, world.run())  # another run's preflight: the catalog is set up now
    # the run's own id, its preflight failed before it opened a row: no row, so no slot and no object either
    with pytest.raises(NothingToDo, match="Preflight failed"):
        backup.mark_failed(res, run.backup_id("full"))
    assert world.catalog.get_backup(run.backup_id("full")) is None
    begun = backup.begin(res, run)
    backup.export(res, begun.backup_id, run)
    assert backup.mark_failed(res, begun.backup_id) is True
    assert world.catalog.get_backup(begun.backup_id)["status"] == "failed"  # type: ignore[index]
    assert slot_info(res.source(), slot_name_for(begun.backup_id)) is None  # no WAL kept for a dead chain


def test_a_fourth_target(world: World, tmp_path: Path) -> None:
    """A target added to the policy gets its copy, its verification and its replica row; roles fill the
    catalog's location columns."""
    raw = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    raw["targets"]["vault"] = {"kind": "local", "conn_id": "backup_vault", "medium": "tape", "site": "bunker"}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    policy = load_policy(path)
    assert policy.target_names == ("primary", "secondary", "offsite", "vault")
    assert policy.target("vault").role == "offsite"  # another site than the source's
    world.storages["vault"] = LocalStorage(tmp_path / "vault", name="vault", medium="tape", site="bunker")

    backup_id = world.full_backup(world.resources(policy))
    row = world.catalog.get_backup(backup_id)
    assert row is not None and row["status"] == "completed"
    assert [r["target_name"] for r in row["replicas"]] == ["offsite", "primary", "secondary", "vault"]
    assert all(r["verified"] for r in row["replicas"])
    assert row["offsite_location"].startswith("gs")  # the first offsite copy, in policy order
    assert read_manifest(world.storages["vault"], backup_id).backup_id == backup_id


def test_a_manual_backup_is_a_full_recorded_as_manual(world: World) -> None:
    """The console's type manual: a whole export that starts a chain, recorded as manual with its reason."""
    res, run = world.resources(), world.run()
    begun = backup.begin(res, run, backup_type="manual", reason="before the supplier import")
    assert begun.backup_id.startswith("manual-")
    exported = backup.export(res, begun.backup_id, run, backup_type="manual")
    assert slot_info(res.source(), slot_name_for(begun.backup_id)) is not None  # the chain starts here too
    world.copy_and_commit(res, begun.backup_id, exported.manifest_sha256)
    row = world.catalog.get_backup(begun.backup_id)
    assert row is not None and (row["backup_type"], row["status"]) == ("manual", "completed")
    assert row["reason"] == "before the supplier import"
    m = read_manifest(world.storages["primary"], begun.backup_id)
    assert m.backup_type == "manual" and m.chain is not None and m.chain.method == "logical"
