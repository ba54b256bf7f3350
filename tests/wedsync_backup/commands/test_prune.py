"""The prune command: retention on every target, abandoned attempts by the age in their id, stale slots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from wedsync_backup.backup_id import make_backup_id
from wedsync_backup.commands.prune import prune
from wedsync_backup.logical.slot import wedsync_slots
from wedsync_backup.repository import committed_backup_ids

from tests.wedsync_backup.commands.conftest import World


def test_prune_keeps_the_newest_and_removes_what_is_old(world: World) -> None:
    first = world.full_backup()
    second = world.full_backup()
    third = world.full_backup()
    res = world.resources()
    now = datetime.now(UTC)
    old_attempt = make_backup_id("full", "backup_daily_full|crashed", now - timedelta(hours=72))
    young_attempt = make_backup_id("full", "backup_daily_full|running", now - timedelta(hours=1))
    for store in world.storages.values():
        for bid in (old_attempt, young_attempt, "handmade"):
            store.put_bytes(f"backups/{bid}/data/00000-public.users-000.wsb", b"partial")

    # Nothing is past 30 days yet; only the old abandoned attempt goes. The first full's chain is superseded
    # by two newer fulls: its slot goes.
    result = prune(res)
    assert result.pruned == {"primary": [], "secondary": [], "offsite": []}
    for store in world.storages.values():
        left = {o.key.split("/")[1] for o in store.list("backups/")}
        assert left == {first, second, third, young_attempt, "handmade"}, store.name
    m = {bid: world.catalog.get_backup(bid) for bid in (first, second, third)}
    assert all(r is not None and r["pruned_at"] is None for r in m.values())
    assert len(wedsync_slots(res.source())) == 2

    # 31 days later: everything but the newest full is pruned, from every target and from the catalog.
    later = prune(res, now=now + timedelta(days=31))
    assert later.pruned == {name: [first, second] for name in ("primary", "secondary", "offsite")}
    for store in world.storages.values():
        assert committed_backup_ids(store) == [third]
    assert world.catalog.get_backup(first)["pruned_at"] is not None  # type: ignore[index]
    assert [b["backup_id"] for b in world.catalog.list_completed()] == [third]
