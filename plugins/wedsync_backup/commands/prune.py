"""The prune command: retention on every target, abandoned attempts, and slots no chain can continue from.

The newest complete backup of a type is never pruned, nor anything a kept backup depends on. A backup is
removed from storage first and from the catalog after, so a prune that stops half way is finished next time.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from wedsync_backup.backup_id import backup_age_hours
from wedsync_backup.commands.files_backup import prune_contents
from wedsync_backup.commands.resources import Resources
from wedsync_backup.errors import ConfigError
from wedsync_backup.logical.slot import drop_slot, slot_name_for, wedsync_slots
from wedsync_backup.manifest import FULL_TYPES
from wedsync_backup.repository import committed_manifests
from wedsync_backup.retention import delete_backup, incomplete_backup_ids, select_prunable

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    retention_days: int
    pruned: dict[str, list[str]]  # target name -> backup ids removed there

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune(
    res: Resources,
    *,
    backup_type: str = "full",
    tier: str = "full",
    abandoned_after_hours: int = 48,
    now: datetime | None = None,
) -> PruneResult:
    """Apply ``tier``'s retention to ``backup_type`` backups on every target, then to the catalog."""
    policy = res.policy
    t = policy.tiers.get(tier)
    if t is None:
        raise ConfigError(f"The policy has no tier '{tier}'", fix=f"add tiers.{tier}.retention_days")
    cat = res.catalog()
    now = now or datetime.now(UTC)
    running = {r["backup_id"] for r in cat.list_in_progress()}
    pruned: dict[str, list[str]] = {}
    unreferenced: list[str] = []
    for storage in res.all_storages():
        manifests = committed_manifests(storage)
        ids = select_prunable(
            manifests,
            now=now,
            retention_days=t.retention_days,
            backup_type=FULL_TYPES if backup_type == "full" else backup_type,  # manual backups age like fulls
            recorded=backup_type == "wedding",  # each wedding backup keeps its weddings' retention policy
        )
        for backup_id in ids:
            delete_backup(storage, backup_id)
        pruned[storage.name] = ids
        unreferenced += prune_contents(res, storage, [m for m in manifests if m.backup_id not in ids], running)
        committed = {m.backup_id for m in manifests}
        for backup_id in incomplete_backup_ids(storage, committed, running):
            age = backup_age_hours(backup_id, now)
            if age is not None and age > abandoned_after_hours:
                delete_backup(storage, backup_id)
                log.info("Removed abandoned attempt %s from %s", backup_id, storage.name)
    for backup_id in sorted({i for ids in pruned.values() for i in ids}):
        cat.delete_backup_rows(backup_id)
    cat.forget_contents(sorted(set(unreferenced)))
    if backup_type == "full":
        drop_stale_slots(res, running)
    log.info("Retention (%d days) pruned: %s", t.retention_days, pruned)
    return PruneResult(t.retention_days, pruned)


def drop_stale_slots(res: Resources, running: set[str]) -> list[str]:
    """Slots whose chain can never be continued keep WAL on the source for nothing: drop them.

    That is a slot of no committed full backup (and no running one), or of a full that two newer fulls have
    superseded (the hourly tier closes a chain as soon as the next full exists).
    """
    source = res.source()
    fulls = sorted(
        (m for m in committed_manifests(res.primary()) if m.point.slot),
        key=lambda m: m.point.time or m.created_at,
    )
    keep = {m.point.slot for m in fulls[-2:]} | {slot_name_for(b) for b in running}
    dropped = []
    for s in wedsync_slots(source):
        if s.name not in keep:
            drop_slot(source, s.name)
            dropped.append(s.name)
            log.warning("!!! Dropped replication slot %s: no chain can continue from it", s.name)
    return dropped
