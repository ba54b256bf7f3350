"""The RTO per priority group: each group is indexed as soon as its data is in, and the restore records when
each became usable, in its result and in disaster_recovery_events."""

from __future__ import annotations

from wedsync_backup.commands import restore
from wedsync_backup.commands.restore import RestoreRequest
from wedsync_backup.manifest import TableEntry
from wedsync_backup.repository import read_manifest
from wedsync_backup.restore import restore_backup

from tests.wedsync_backup.commands.conftest import World
from tests.wedsync_backup.commands.test_restore import destination


def test_the_restore_records_when_each_priority_group_became_usable(world: World) -> None:
    backup_id = world.full_backup()
    destination(world)
    res, run = world.resources(), world.run("emergency_restore")
    req = RestoreRequest(
        "restore_db", mode="backup_id", backup_id=backup_id, reason="rto", dry_run="false", confirm="RESTORE restore_db"
    )
    planned = restore.plan(res, req, run)
    done = restore.restore(res, req, planned.plan, run, event_id=planned.event_id, retry=False)
    rto = done["rto_per_group"]
    assert list(rto) == ["critical", "standard"]  # users; guests and notes (the policy lists no 'high' table)
    assert all(0 < seconds <= done["seconds"] for seconds in rto.values())
    assert set(done["group_usable_at"]) == {"critical", "standard"}
    event = world.catalog.get_recovery_event(planned.event_id)  # type: ignore[arg-type]
    assert event is not None and event["result"]["rto_per_group"] == rto


def test_the_critical_group_is_indexed_before_the_next_group_loads(world: World) -> None:
    backup_id = world.full_backup()
    target = world.db(destination(world), "restore_db")
    manifest = read_manifest(world.storages["primary"], backup_id)
    seen: dict[str, object] = {}

    def loaded(table: TableEntry) -> None:
        if table.name == "guests":  # the first standard table: the critical group is complete before it
            with target.connect(autocommit=True) as conn:
                seen["users_pkey"] = conn.execute("SELECT to_regclass('public.users_pkey')::text").fetchone()[0]  # type: ignore[index]
                seen["guests_pkey"] = conn.execute("SELECT to_regclass('public.guests_pkey')::text").fetchone()[0]  # type: ignore[index]

    result = restore_backup(manifest, world.storages["primary"], world.ring, target, workers=1, on_table_loaded=loaded)
    assert seen == {"users_pkey": "users_pkey", "guests_pkey": None}
    assert result.rto_per_group["critical"] < result.rto_per_group["standard"]
