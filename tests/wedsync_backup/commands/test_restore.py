"""The restore command, called directly: plan (checks, records, touches nothing), restore (all or nothing)."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace

import pytest
from wedsync_backup.commands import restore
from wedsync_backup.commands.resources import NothingToDo
from wedsync_backup.commands.restore import RestoreRequest
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError
from wedsync_backup.restore import target_contents

from tests.faults.helpers import restore_killed_half_way
from tests.wedsync_backup.commands.conftest import World
from tests.wedsync_backup.commands.test_incremental import hourly
from tests.wedsync_backup.test_export import db_state


def destination(world: World) -> str:
    """A fresh empty database behind the connection id ``restore_db``."""
    name = f"dst_{uuid.uuid4().hex[:10]}"
    world.cluster.create_database(name)
    world.databases["restore_db"] = world.db(name, "restore_db")
    return name


def test_plan_then_restore_latest_from_offsite(world: World) -> None:
    world.full_backup()
    world.write("INSERT INTO public.users (email) VALUES ('late@example.com')")
    hourly(world)
    db = destination(world)
    res = world.resources()

    dry = RestoreRequest("restore_db", from_target="offsite", reason="drill")
    run = world.run("emergency_restore")
    planned = restore.plan(res, dry, run)
    assert planned.plan["dry_run"] is True and len(planned.plan["incremental_backup_ids"]) == 1
    assert world.catalog.get_recovery_event(planned.event_id)["status"] == "planned"  # type: ignore[arg-type,index]
    with pytest.raises(NothingToDo, match="Dry run"):
        restore.restore(res, dry, planned.plan, run, event_id=planned.event_id, retry=False)
    assert db_state(world.cluster, db) == ({}, {})  # untouched

    real = RestoreRequest(
        "restore_db", from_target="offsite", reason="drill", dry_run="false", confirm="RESTORE restore_db"
    )
    run = world.run("emergency_restore")
    planned = restore.plan(res, real, run)
    done = restore.restore(res, real, planned.plan, run, event_id=planned.event_id, retry=False)
    assert done["from_target"] == "offsite" and done["replayed_transactions"] == 1
    assert db_state(world.cluster, db)[0] == db_state(world.cluster, world.source_db)[0]
    event = world.catalog.get_recovery_event(planned.event_id)  # type: ignore[arg-type]
    assert event is not None and event["status"] == "completed"
    assert (event["recovery_type"], event["recovery_environment"], event["initiated_by"]) == (
        "full_restore",
        "isolated",
        "tester",
    )
    assert event["backup_used"] == done["backup_id"] and event["business_impact_level"] == "critical"

    # A retry after the restore finished (the task died before reporting it) never restores again.
    assert restore.restore(res, real, planned.plan, run, event_id=planned.event_id, retry=True) == event["result"]


def test_bad_requests_are_refused_and_recorded(world: World) -> None:
    world.full_backup()
    res = world.resources()
    cases = [
        (RestoreRequest("restore_db", from_target="tape", reason="x"), "Unknown backup target 'tape'"),
        (RestoreRequest("wedsync_source", reason="x"), "is the backup source or catalog"),
        (RestoreRequest("restore_db", reason="x", dry_run=False, confirm="yes"), "Restore not confirmed"),
        (
            RestoreRequest("restore_db", mode="point_in_time", target_time="2026-11-21 14:30", reason="x"),
            "no time zone",
        ),
        (RestoreRequest("restore_db", reason=""), "No reason given"),
    ]
    destination(world)
    for req, message in cases:
        run = world.run("emergency_restore")
        with pytest.raises(ConfigError, match=message):
            restore.plan(res, req, run)
    with world.catalog.connect() as conn:
        statuses = conn.execute("SELECT status FROM disaster_recovery_events").fetchall()
    assert [r["status"] for r in statuses] == ["refused"] * len(cases)


def test_put_back_after_the_restores_last_try_was_killed(world: World) -> None:
    """Its last try killed outright, the restore left the destination half-loaded under its mark: put_back puts it
    back as it was (empty) and records that on the run's event. A dry run, a partial scope, or a run whose plan
    never finished is skipped, touching nothing."""
    key = os.urandom(32)
    world.ring = Keyring(key)  # the key the killed restore's own process is given
    world.full_backup()
    db = destination(world)
    res = world.resources()
    real = RestoreRequest("restore_db", reason="drill", dry_run="false", confirm="RESTORE restore_db")
    run = world.run("emergency_restore")
    planned = restore.plan(res, real, run)
    backup_id = planned.plan["backup_id"]
    target = world.databases["restore_db"]
    restore_killed_half_way(key, target, world.storages["primary"].root, backup_id)  # type: ignore[attr-defined]
    half = target_contents(target)

    skipped = [
        (replace(real, dry_run=True), planned.plan, "Dry run"),
        (replace(real, scope="selective", tables=["public.notes"]), planned.plan, "one transaction"),
        (real, None, "plan did not finish"),
    ]
    for req, plan, why in skipped:
        with pytest.raises(NothingToDo, match=why):
            restore.put_back(res, req, plan, run, event_id=planned.event_id)
    assert target_contents(target) == half

    done = restore.put_back(res, real, planned.plan, run, event_id=planned.event_id)
    assert done == {
        "put_back": True,
        "message": f"put restore_db back as it was (empty): the restore of {backup_id} was interrupted",
    }
    assert target_contents(target) == [] and db_state(world.cluster, db) == ({}, {})
    event = world.catalog.get_recovery_event(planned.event_id)  # type: ignore[arg-type]
    assert event is not None
    assert (event["status"], event["error"], event["result"]) == ("failed", restore.DIED_UNREPORTED, {"put_back": done})
    assert [e["action"] for e in world.catalog.audit_entries(backup_id)][-1] == "restore_put_back"

    # Its retry (or a second look) finds nothing of this restore's left: it says so and leaves the event's error.
    again = restore.put_back(res, real, planned.plan, run, event_id=planned.event_id)
    assert again["put_back"] is False and "carries no restore mark" in again["message"]
    assert world.catalog.get_recovery_event(planned.event_id)["error"] == restore.DIED_UNREPORTED  # type: ignore[arg-type,index]
