"""The incremental command's phases, called directly: begin, capture, commit, release; closing a chain."""

from __future__ import annotations

import pytest
from wedsync_backup.commands import incremental
from wedsync_backup.commands.incremental import IncrementalPlan
from wedsync_backup.commands.resources import NothingToDo
from wedsync_backup.errors import IntegrityError
from wedsync_backup.logical.slot import slot_info
from wedsync_backup.repository import read_manifest

from tests.wedsync_backup.commands.conftest import World


def hourly(world: World) -> tuple[IncrementalPlan, str]:
    """begin -> capture -> replicate/verify/commit -> release, as the DAG runs them; returns (plan, sha)."""
    res = world.resources()
    run = world.run("backup_hourly_incremental")
    plan = incremental.begin(res, run)
    plan = IncrementalPlan.from_dict(plan.as_dict())  # it travels by XCom
    captured = incremental.capture(res, plan.backup_id, plan, run)
    world.copy_and_commit(res, plan.backup_id, captured.manifest_sha256, tier="incremental")
    incremental.release(res, plan.backup_id, captured.manifest_sha256, plan)
    return plan, captured.manifest_sha256


def test_no_chain_without_a_full_backup(world: World) -> None:
    """A fresh installation: nothing to continue yet, so the run skips (green) and says what starts the chain."""
    with pytest.raises(NothingToDo, match="No full backup exists yet"):
        incremental.begin(world.resources(), world.run("backup_hourly_incremental"))


def test_chain_capture_release_and_close(world: World) -> None:
    full = world.full_backup()
    world.write("INSERT INTO public.users (email) VALUES ('new@example.com')")
    world.write("UPDATE public.guests SET party = 9 WHERE id <= 3")

    res = world.resources()
    run = world.run("backup_hourly_incremental")
    plan = incremental.begin(res, run)
    assert plan.action == "capture" and plan.full == full and plan.parent == full and plan.chain == [full]
    captured = incremental.capture(res, plan.backup_id, plan, run)
    assert captured.changes == 4 and captured.transactions == 2 and captured.captures_deletes
    with pytest.raises(IntegrityError, match="not completed"):  # the slot never moves before the commit
        incremental.release(res, plan.backup_id, captured.manifest_sha256, plan)
    world.copy_and_commit(res, plan.backup_id, captured.manifest_sha256, tier="incremental")
    released = incremental.release(res, plan.backup_id, captured.manifest_sha256, plan)
    assert released["advanced_to"] == captured.end_lsn
    assert slot_info(res.source(), str(plan.slot)).confirmed_flush_lsn == captured.end_lsn  # type: ignore[union-attr]

    row = world.catalog.get_backup(plan.backup_id)
    assert row is not None and row["status"] == "completed" and row["parent_backup_id"] == full
    assert row["recovery_point"]["chain"] == [full, plan.backup_id]
    m = read_manifest(world.storages["primary"], plan.backup_id)
    assert m.provenance is not None and m.provenance.dag_id == "backup_hourly_incremental"
    assert m.chain_info is not None and m.chain_info.backup_ids == [full, plan.backup_id]

    # A newer full backup: the next run closes the old chain exactly at the new full's LSN, then drops its slot.
    newer = world.full_backup()
    world.write("DELETE FROM public.notes WHERE note = 'a'")
    closing, _ = hourly(world)
    assert closing.action == "close" and closing.full == full and closing.upto_lsn
    assert slot_info(res.source(), str(closing.slot)) is None
    following = incremental.begin(res, world.run("backup_hourly_incremental"))
    assert following.full == newer and following.chain == [newer]


def test_a_captured_schema_change_travels_in_the_chain(world: World) -> None:
    """The full backup's preflight installs the DDL capture: a schema change no longer ends the chain."""
    world.full_backup()
    world.write("ALTER TABLE public.users ADD COLUMN phone text")
    world.write("UPDATE public.users SET phone = '555' WHERE id = 1")
    res = world.resources()
    run = world.run("backup_hourly_incremental")
    plan = incremental.begin(res, run)
    assert plan.action == "capture"
    captured = incremental.capture(res, plan.backup_id, plan, run)
    assert captured.schema_changes == 1 and captured.chain_end is None
    row = world.catalog.get_backup(plan.backup_id)
    assert row is not None and row["schema_changes"] == "replayed"
    assert "chain_ended" not in [a["action"] for a in world.catalog.audit_entries()]
