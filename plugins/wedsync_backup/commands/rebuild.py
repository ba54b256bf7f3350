"""The catalog rebuild command: the tracking tables brought back from the repository (any one target).

The repository is self-describing: every committed backup has a manifest carrying its figures, its run,
its creator and reason, the 3-2-1 verdict, the warnings and its retention. The rebuild reads the manifests
of one target, checks each one's MAC, verifies every copy on every target like the backup's own verify
step, and records the backups whose every copy verifies. Into an empty catalog, or a damaged one: rows
that are there are completed or left as they are, never duplicated.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from wedsync_backup.commands.resources import Resources, RunRef
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import WedSyncError
from wedsync_backup.manifest import Manifest, manifest_key
from wedsync_backup.repository import committed_backup_ids
from wedsync_backup.restore import verify_manifest_mac
from wedsync_backup.storage.base import Storage
from wedsync_backup.verify import verify_copy

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    from_target: str
    found: int
    rebuilt: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # backup id -> why it was not recorded

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _copy_on(storage: Storage, manifest: Manifest, sha: str, ring: Keyring) -> dict[str, Any]:
    """The replica row for ``storage``'s copy: verified only if it holds this very manifest and every object."""
    row: dict[str, Any] = {
        "target_name": storage.name,
        "kind": storage.kind,
        "medium": storage.medium,
        "site": storage.site,
        "location": storage.url(f"backups/{manifest.backup_id}/"),
        "stored_bytes": manifest.stored_bytes,
        "object_count": len(manifest.objects()),
        "manifest_sha256": sha,
        "verified": False,
        "verified_at": None,
    }
    key = manifest_key(manifest.backup_id)
    try:
        if not storage.exists(key):
            row["error"] = f"no manifest on {storage.name}"
            return row
        if hashlib.sha256(storage.get_bytes(key)).hexdigest() != sha:
            row["error"] = f"{storage.name} holds a different manifest"
            return row
        result = verify_copy(manifest, storage, ring)
    except WedSyncError as e:
        row["error"] = str(e)
        return row
    row.update(result.as_dict())
    row["verified_at"] = datetime.fromisoformat(result.verified_at)
    return row


def rebuild_catalog(res: Resources, from_target: str, run: RunRef) -> RebuildReport:
    """Rebuild the backup rows (operations, replicas, table stats, recovery points) from ``from_target``."""
    policy = res.policy
    cat = res.catalog()
    applied = cat.migrate()
    if applied:
        log.info("Catalog migrations applied: %s", ", ".join(applied))
    ring = res.keyring()
    source = res.storage(from_target)
    storages = res.all_storages()
    ids = committed_backup_ids(source)
    report = RebuildReport(from_target, len(ids))
    log.info("Rebuilding the catalog from %d manifests on %s (%s)", len(ids), source.name, source.url())
    found = []
    for i, backup_id in enumerate(ids, 1):
        try:
            data = source.get_bytes(manifest_key(backup_id))
            manifest = Manifest.from_bytes(data, source=f"manifest of {backup_id} on {source.name}")
            verify_manifest_mac(manifest, ring)
        except WedSyncError as e:
            report.skipped[backup_id] = str(e)
            log.warning("Skipping %s: %s", backup_id, e)
            continue
        sha = hashlib.sha256(data).hexdigest()
        found.append((manifest, sha, [_copy_on(s, manifest, sha, ring) for s in storages]))
        log.info("Checked %d/%d: %s", i, len(ids), backup_id)
    result = cat.rebuild_from_manifests(
        found,
        retention_days={name: t.retention_days for name, t in policy.tiers.items()},
        roles=policy.roles(),
        actor=run.actor,
    )
    report.rebuilt = result.rebuilt
    report.skipped.update(result.skipped)
    for backup_id, why in sorted(report.skipped.items()):
        log.warning("!!! Not recorded: %s: %s", backup_id, why)
    log.info("Catalog rebuilt: %d backups recorded, %d not", len(report.rebuilt), len(report.skipped))
    return report
