"""Reading a target as a self-describing repository: committed backups are the ones with a manifest."""

from __future__ import annotations

import logging
import re

from wedsync_backup.crypto import DataKey
from wedsync_backup.errors import IntegrityError, StorageError
from wedsync_backup.manifest import Manifest, backup_prefix, manifest_key, pending_manifest_key
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
_MANIFEST = re.compile(r"^backups/([^/]+)/manifest\.json$")


def committed_backup_ids(storage: Storage) -> list[str]:
    """Ids of every backup whose manifest (its commit marker) is on ``storage``, oldest first."""
    ids = [m.group(1) for o in storage.list("backups/") if (m := _MANIFEST.match(o.key))]
    return sorted(ids)


def read_manifest(storage: Storage, backup_id: str) -> Manifest:
    key = manifest_key(backup_id)
    if not storage.exists(key):
        raise StorageError(
            f"Backup {backup_id} has no manifest on target {storage.name} ({storage.url(key)})",
            "it does not exist there or was never completed",
            "pick a completed backup (see the backup_operations table) or another target",
        )
    manifest = Manifest.from_bytes(storage.get_bytes(key), source=f"manifest of {backup_id} on {storage.name}")
    if manifest.backup_id != backup_id:
        # Its MAC is genuine, but for another backup: a copied or moved manifest must not pass for this one.
        raise IntegrityError(
            f"The manifest in the folder of backup {backup_id} on target {storage.name} is the manifest of "
            f"backup {manifest.backup_id}",
            "it was copied or moved there; this folder holds no valid backup",
            "restore from another target, or pick the backup the manifest belongs to",
        )
    return manifest


def committed_manifests(storage: Storage) -> list[Manifest]:
    out = []
    for backup_id in committed_backup_ids(storage):
        try:
            out.append(read_manifest(storage, backup_id))
        except IntegrityError:
            continue  # an unreadable manifest does not hide the others
    return out


def begin_attempt(storage: Storage, backup_id: str) -> Manifest | None:
    """Start (or restart) writing a backup: its committed manifest if it is already done, else None.

    What an earlier, interrupted attempt of the same backup left behind is removed first, so a retry
    never mixes objects of two attempts.
    """
    committed = manifest_key(backup_id)
    if storage.exists(committed):
        log.info("Backup %s is already committed on %s", backup_id, storage.name)
        return Manifest.from_bytes(storage.get_bytes(committed), source=f"manifest on {storage.name}")
    leftovers = [o.key for o in storage.list(backup_prefix(backup_id))]
    if leftovers:
        log.info("Removing %d objects of an earlier attempt of %s", len(leftovers), backup_id)
        storage.delete(leftovers)
    return None


def seal_pending(storage: Storage, manifest: Manifest, data_key: DataKey) -> str:
    """Authenticate the manifest under its backup's data key and leave it pending; returns its sha256."""
    manifest.mac = data_key.mac(manifest.body_bytes())
    data = manifest.to_bytes()
    storage.put_bytes(pending_manifest_key(manifest.backup_id), data)
    return manifest.sha256()


def pending_manifest_bytes(storage: Storage, backup_id: str) -> bytes:
    """The pending manifest of a backup, or its committed one once the commit removed the pending copy."""
    key = pending_manifest_key(backup_id)
    return storage.get_bytes(key if storage.exists(key) else manifest_key(backup_id))


def write_commit_marker(manifest: Manifest, storages: list[Storage], pending_on: Storage) -> None:
    """Write the manifest (the commit marker) byte for byte on every copy and read it back, then drop the
    pending one: from here on the backup exists on every target."""
    data = manifest.to_bytes()
    key = manifest_key(manifest.backup_id)
    for storage in storages:
        storage.put_bytes(key, data)
        if storage.get_bytes(key) != data:
            raise StorageError(
                f"The manifest of {manifest.backup_id} did not read back intact from {storage.name}",
                fix="check the target and re-run this task",
            )
    pending_on.delete([pending_manifest_key(manifest.backup_id)])
