"""The full backup as one task: preflight (``backup.begin``), export (every copy written at once), verify every
copy (side by side), commit, prune. Made of the backup and prune commands' phases, in their order, with their
rules: nothing is written before the preflight passed, and retention is applied only once the new backup is
committed.

Why one task: each Airflow task costs a fixed few seconds (a process, Airflow's task start-up, building the
storages and connections again, the scheduler's gap before the next task), and a replicate pass re-reads and
re-sends what the export just wrote.
Here the copies are streamed during the export (``storage.tee``), each one is then read back and verified
(size, sha256 and decryption of every object) on its own thread, and only when every copy verified is the
manifest committed on every target and the catalog row completed, exactly as the separate phases do.

A retry is idempotent: a backup already committed is found committed (the export returns its manifest, the
verification reads the copies again, the commit rewrites the same marker and row); anything less is
exported again from scratch on every target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from wedsync_backup.commands import backup
from wedsync_backup.commands.prune import prune
from wedsync_backup.commands.resources import Resources, RunRef
from wedsync_backup.configurations.bundle import ConfigurationBundle
from wedsync_backup.configurations.store import store_configurations
from wedsync_backup.manifest import Manifest, StoredObject
from wedsync_backup.replicate import replicate
from wedsync_backup.storage.base import Storage
from wedsync_backup.verify import verify_copy, verify_named

log = logging.getLogger(__name__)


@dataclass
class FullBackupResult:
    exported: backup.ExportResult
    verified: list[str]  # the targets whose copy was read back and verified
    committed: backup.CommitResult
    pruned: dict[str, list[str]] = field(default_factory=dict)  # target -> backup ids retention removed
    begun: backup.BeginResult | None = None  # the preflight's verdict (when this task ran it)

    def as_dict(self) -> dict[str, Any]:
        return {
            **(self.begun.summary() if self.begun is not None else {}),
            **self.exported.as_dict(),
            "verified": self.verified,
            **self.committed.as_dict(),
            "pruned": self.pruned,
        }


class EarlyVerifier:
    """Reads back and verifies each table part on every target as soon as the export has committed it, while
    the export goes on: by the end of the export most of every copy is proven, and ``verify_every_copy``
    reads only the rest (the schema, the objects added after the export). Proven means exactly what
    ``verify_copy`` proves (size, sha256, decryption of every byte), of the very object the manifest lists.

    One reader thread per target, each taking its target's parts in the order they were stored: one thread
    for all three fell a second behind the export's end (bench.user_view); a target's reader holds one
    read buffer. A failure is kept and raised by :meth:`verified`."""

    def __init__(self, res: Resources, backup_id: str) -> None:
        self.backup_id = backup_id
        self.keyring = res.keyring()
        self.storages = res.all_storages()
        self._pools = {s.name: ThreadPoolExecutor(1, thread_name_prefix=f"verify-{s.name}") for s in self.storages}
        self._checks: list[tuple[str, StoredObject, Future[None]]] = []

    def stored(self, obj: StoredObject) -> None:
        for storage in self.storages:
            check = self._pools[storage.name].submit(verify_named, storage, obj, self.keyring, self.backup_id)
            self._checks.append((storage.name, obj, check))

    def verified(self, target: str) -> dict[str, StoredObject]:
        """The objects proven on ``target`` (waiting for those still being read); raises the first fault."""
        return {obj.key: obj for name, obj, check in self._checks if name == target and check.result() is None}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


def verify_every_copy(
    res: Resources, manifest: Manifest, manifest_sha256: str, early: EarlyVerifier | None = None
) -> list[dict[str, Any]]:
    """``verify_copy`` of the pending ``manifest`` on every target at once (a thread each: the work is mostly
    reading and waiting on the target); the first failure is raised, naming its target. Storages and keys are
    built here, in the caller's thread, as connections are read there. ``early``: what was already proven
    during the export."""
    keyring = res.keyring()
    storages = res.all_storages()

    def one(storage: Storage) -> dict[str, Any]:
        already = early.verified(storage.name) if early is not None else None
        return {
            **verify_copy(manifest, storage, keyring, already=already).as_dict(),
            "manifest_sha256": manifest_sha256,
        }

    with ThreadPoolExecutor(max_workers=len(storages), thread_name_prefix="verify") as pool:
        return list(pool.map(one, storages))


def copy_what_the_export_did_not(res: Resources, manifest: Manifest) -> dict[str, int]:
    """Objects added to the backup after the export (the files state, the configurations component) are on
    the primary only: copy to each replica the objects the pending ``manifest`` lists and it lacks. Every copy
    is read back and verified next."""
    primary = res.primary()
    copied: dict[str, int] = {}
    for t in res.policy.replicas:
        replica = res.storage(t.name)
        copied[replica.name] = replicate(manifest, primary, replica, trust_sizes=True).copied
    return copied


def export_verify_commit(
    res: Resources,
    backup_id: str,
    run: RunRef,
    *,
    backup_type: str = "full",
    tier: str = "full",
    configurations: ConfigurationBundle | None = None,
) -> FullBackupResult:
    """Export with every copy written at once (each part read back and verified as soon as it is on every
    target), add the configurations component, verify what is left of every copy, then commit (begin has
    opened the row)."""
    early = EarlyVerifier(res, backup_id)
    try:
        exported = backup.export(
            res, backup_id, run, backup_type=backup_type, tier=tier, copies=True, on_stored=early.stored
        )
        sha = exported.manifest_sha256
        if configurations is not None:
            sha = store_configurations(res, backup_id, sha, configurations).manifest_sha256
            exported.manifest_sha256 = sha
        manifest = backup.load_pending_manifest(res, backup_id, sha)  # read once, for the copies and the checks
        copy_what_the_export_did_not(res, manifest)
        verifications = verify_every_copy(res, manifest, sha, early)
    finally:
        early.close()
    committed = backup.commit(res, backup_id, sha, verifications, tier=tier)
    return FullBackupResult(exported, [v["target_name"] for v in verifications], committed)


def full_backup(
    res: Resources,
    backup_id: str,
    run: RunRef,
    *,
    backup_type: str = "full",
    tier: str = "full",
    configurations: ConfigurationBundle | None = None,
) -> FullBackupResult:
    """``export_verify_commit``, then retention (``commands.prune``): the backup_daily_full task after preflight."""
    result = export_verify_commit(
        res, backup_id, run, backup_type=backup_type, tier=tier, configurations=configurations
    )
    result.pruned = prune(res, backup_type="full", tier=tier).pruned
    return result


def preflight_and_full_backup(
    res: Resources,
    run: RunRef,
    *,
    backup_type: str = "full",
    tier: str = "full",
    reason: str | None = None,
    configurations: Callable[[], ConfigurationBundle | None] | None = None,
    on_begun: Callable[[backup.BeginResult], None] | None = None,
) -> FullBackupResult:
    """The backup_daily_full run's work: the preflight (every check before anything is written; then the
    catalog row is opened), then ``full_backup``. ``on_begun`` is told the backup id as soon as the row
    exists (the task publishes it for its failure handling); ``configurations`` is gathered only after the
    preflight passed."""
    log.info("Preflight: the catalog's migrations, the 3-2-1 rule, the source, the key and every target")
    begun = backup.begin(res, run, backup_type=backup_type, tier=tier, reason=reason)
    if on_begun is not None:
        on_begun(begun)
    log.info("Preflight passed: backup %s is open (in progress); exporting", begun.backup_id)
    result = full_backup(
        res,
        begun.backup_id,
        run,
        backup_type=backup_type,
        tier=tier,
        configurations=configurations() if configurations is not None else None,
    )
    result.begun = begun
    return result
