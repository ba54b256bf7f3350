"""The files component of a backup: captured into the backup's pending manifest, before replicate/verify/commit.

A full backup lists the whole file state; an incremental lists what changed since its parent's capture (the
same chain retention keeps together); a wedding backup lists only its weddings' files (a scoped capture, which
no whole restore and no delta takes as its base). New content goes to every target and is verified there at once; the
state object is part of the backup and goes through replicate/verify/commit like every other object.
"""

from __future__ import annotations

import logging

import psycopg

from wedsync_backup.commands.resources import Resources
from wedsync_backup.errors import ConfigError, WedSyncError
from wedsync_backup.files.capture import FilesWorld, capture_into
from wedsync_backup.files.prune import remove_unreferenced
from wedsync_backup.files.source import ExportSnapshot
from wedsync_backup.manifest import Manifest
from wedsync_backup.storage.base import Storage
from wedsync_backup.storage.s3 import S3Storage

log = logging.getLogger(__name__)
OFF_WARNING = (
    "The files component is off: the backup policy sets no files.bucket (nor WEDSYNC_FILES_BUCKET), so the "
    "platform's photos and documents are NOT backed up"
)


def files_bucket(res: Resources) -> S3Storage:
    """The platform's files bucket, through the policy's aws connection (``wedsync_files``)."""
    files = res.policy.files
    bucket = res.open_storage(files.source_target())
    if not isinstance(bucket, S3Storage):
        raise ConfigError(
            f"The files bucket through connection {files.conn_id} is not an S3 bucket",
            fix=f"make connection {files.conn_id} an aws connection (endpoint_url in its extra for S3-compatible)",
        )
    return bucket


def files_world(
    res: Resources, snapshot: ExportSnapshot | None = None, wedding_ids: list[str] | None = None
) -> FilesWorld:
    cat = res.catalog()
    return FilesWorld(
        res.source(),
        res.policy.files,
        files_bucket(res),
        res.all_storages(),
        res.keyring(),
        cat.stored_content,
        workers=res.policy.files.workers,
        snapshot=snapshot,
        wedding_ids=wedding_ids,
    )


def export_snapshot(res: Resources) -> ExportSnapshot | None:
    """What the export attaches its snapshot to (None: the files component is off)."""
    return ExportSnapshot(res.source()) if res.policy.files.enabled else None


def held_snapshot(res: Resources, snapshot: str) -> ExportSnapshot | None:
    """Import a snapshot another session still holds (a wedding run's, before its seal releases it); when it
    is gone already (a retried seal), the files are read at the capture's own moment, and the log says so."""
    snap = export_snapshot(res)
    if snap is not None:
        try:
            snap.attach(snapshot)
        except (psycopg.Error, WedSyncError) as e:
            log.warning("!!! The files are read now, not in the run's snapshot (no longer held): %s", e)
    return snap


def add_files(
    res: Resources,
    manifest: Manifest,
    snapshot: ExportSnapshot | None = None,
    wedding_ids: list[str] | None = None,
) -> Manifest:
    """Capture the files into ``manifest``'s backup and re-seal its pending manifest on the primary.

    ``snapshot``: the export's, attached while it held it; the files table is then read in the very snapshot
    the backup's tables come from (without it, in a transaction of its own, as an incremental does).
    ``wedding_ids``: a wedding backup's weddings; only their files are captured (a scoped capture)."""
    if manifest.files is not None:  # already captured (a retried task found the backup done)
        return manifest
    if not res.policy.files.enabled:
        log.warning("!!! %s", OFF_WARNING)
        return manifest
    capture_into(files_world(res, snapshot, wedding_ids), manifest, res.catalog())
    return manifest


def prune_contents(res: Resources, storage: Storage, retained: list[Manifest], running: set[str]) -> list[str]:
    """After retention removed backups from ``storage``: the content objects no retained backup lists."""
    if running:
        log.info("Content store of %s not pruned: backups are running (%s)", storage.name, ", ".join(sorted(running)))
        return []
    return remove_unreferenced(storage, retained, res.keyring())
