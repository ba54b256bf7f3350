"""Retention: which backups may go, and removing them from a target safely.

The newest complete full backup is never pruned, whatever its age. A backup is removed manifest first, so
a prune that stops half way leaves an incomplete backup (ignored and removed next time), never a committed
one with objects missing. Objects of attempts that never committed are removed once they are old.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta

from wedsync_backup.manifest import Manifest, backup_prefix, manifest_key
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
_ID = re.compile(r"^backups/([^/]+)/")


def _time(m: Manifest) -> datetime:
    return datetime.fromisoformat(m.consistent_point.get("time") or m.created_at)


def _expired(m: Manifest, cutoff: datetime, now: datetime, recorded: bool) -> bool:
    """Past the tier's window; with ``recorded``, past the retention the backup itself recorded (a wedding
    backup's retention policy: None is permanent)."""
    if not recorded:
        return _time(m) < cutoff
    until = m.provenance_info.retention_until
    return until is not None and datetime.fromisoformat(until) < now


def select_prunable(
    manifests: list[Manifest],
    *,
    now: datetime,
    retention_days: int,
    backup_type: str = "full",
    recorded: bool = False,
) -> list[str]:
    """Ids of ``backup_type`` backups older than the retention window, never the newest of that type.

    A backup that a kept backup depends on (a full or incremental under a kept incremental) is kept too.
    """
    mine = sorted((m for m in manifests if m.backup_type == backup_type), key=_time)
    if not mine:
        return []
    newest = mine[-1].backup_id
    cutoff = now - timedelta(days=retention_days)
    candidates = {m.backup_id for m in mine if _expired(m, cutoff, now, recorded) and m.backup_id != newest}
    parent = {m.backup_id: m.parent_backup_id for m in manifests}
    protected: set[str] = set()
    for m in manifests:
        if m.backup_id in candidates:
            continue
        up = parent.get(m.backup_id)
        while up and up not in protected:
            protected.add(up)
            up = parent.get(up)
    return [m.backup_id for m in mine if m.backup_id in candidates - protected]


def delete_backup(storage: Storage, backup_id: str) -> int:
    """Remove one backup from ``storage``: its manifest first, then its objects. Returns objects removed."""
    storage.delete([manifest_key(backup_id)])
    keys = [o.key for o in storage.list(backup_prefix(backup_id))]
    storage.delete(keys)
    return len(keys) + 1


def incomplete_backup_ids(storage: Storage, committed: set[str], in_progress: set[str]) -> list[str]:
    """Backup prefixes with objects but no manifest that no running backup owns."""
    ids = {m.group(1) for o in storage.list("backups/") if (m := _ID.match(o.key))}
    return sorted(ids - committed - in_progress)
