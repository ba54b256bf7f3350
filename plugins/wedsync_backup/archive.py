"""The weekly offsite archive: a recovery point kept for a year, in archive storage, locked where possible.

Each archive is its own export (backup type ``archive``): a backup's objects are bound to its backup id, so
an archive kept longer than the 30-day full backups cannot share their objects, and copying a full backup
under a new id would mean decrypting and re-encrypting it. The archive is then written like every backup:
copied (ciphertext) to every archive target, verified on every copy, committed by its manifest, recorded in
the catalog with a recovery point. It lives beside the other backups on each target, so restores, drills
and the recovery-point list include it; the other tiers' retention never touches it.

On object stores it gets the policy's archive storage class (GCS: set at upload; S3: an in-place copy) and,
when ``lock`` is set and the bucket supports it, a retention lock until its retention ends (S3 Object Lock,
GOVERNANCE) or a hold (GCS: a retention time when the bucket has object retention, else a temporary hold,
released by the archive's own prune).

With the files component on (``files``), the archive carries the file state too, read in the archive
export's own snapshot: its manifest lists every file (path -> content hash), the content objects are
stored (once) on every archive target, and retention keeps every content object a retained archive's state
lists for as long as the archive is kept. Content objects are shared with the other backups, so they get
neither the archive's lock nor (on S3) its class.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from wedsync_backup.assurance_policy import ArchivePolicy
from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError
from wedsync_backup.export import ExportOptions, run_export
from wedsync_backup.files.capture import FilesWorld, capture_into
from wedsync_backup.files.source import ExportSnapshot
from wedsync_backup.manifest import Manifest, manifest_key
from wedsync_backup.pg import PgTarget
from wedsync_backup.policy import Policy
from wedsync_backup.replicate import replicate
from wedsync_backup.repository import committed_manifests, write_commit_marker
from wedsync_backup.retention import delete_backup, select_prunable
from wedsync_backup.rule321 import Rule321Verdict, check_321, enforce_321
from wedsync_backup.storage.base import Storage
from wedsync_backup.verify import verify_copies

log = logging.getLogger(__name__)
# Classes a copy can be read from at once (verify, drills and restores read archives without a restore request).
READABLE_CLASSES = {
    "gcs": ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"),
    "s3": ("STANDARD", "STANDARD_IA", "GLACIER_IR"),
}


def archive_setup(policy: Policy, archive: ArchivePolicy) -> tuple[Rule321Verdict, list[str]]:
    """Check the archive's targets, their classes and their 3-2-1 rule; raise with the fix, or return warnings."""
    targets = [policy.target(name) for name in archive.targets]
    for t in targets:
        cls = archive.storage_class.get(t.name)
        if cls is None:
            continue
        allowed = READABLE_CLASSES.get(t.kind, ())
        if cls not in allowed:
            raise ConfigError(
                f"Archive storage class {cls} is not usable on target {t.name} ({t.kind})",
                "archives are verified, drilled and restored by reading them directly"
                + (", which needs a restore request first in that class" if cls in ("GLACIER", "DEEP_ARCHIVE") else ""),
                f"use one of {', '.join(allowed) or 'none (a local target has no storage class)'}",
            )
    verdict = check_321(dataclasses.replace(policy, targets=tuple(targets), rule_321=archive.rule_321))
    return verdict, enforce_321(verdict)


# --- storage class and lock ------------------------------------------------------------------------------
def _protect_s3(storage: Any, key: str, storage_class: str | None, retain_until: datetime | None) -> None:
    full = storage._full(key)
    if storage_class:
        before = storage.client.head_object(Bucket=storage.bucket, Key=full)
        # A managed copy (multipart above 5 GB) of the object onto itself, in its archive class.
        extra = {"MetadataDirective": "COPY", "StorageClass": storage_class}
        storage.client.copy({"Bucket": storage.bucket, "Key": full}, storage.bucket, full, ExtraArgs=extra)
        if before.get("VersionId") not in (None, "null"):  # the standard-class first upload is not kept
            storage.client.delete_object(Bucket=storage.bucket, Key=full, VersionId=before["VersionId"])
    if retain_until is not None:
        storage.client.put_object_retention(
            Bucket=storage.bucket, Key=full, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": retain_until}
        )


def _s3_lock_enabled(storage: Any) -> bool:
    try:
        cfg = storage.client.get_object_lock_configuration(Bucket=storage.bucket)
    except Exception:  # no lock configuration: the bucket was created without Object Lock
        return False
    return cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"


def _protect_gcs(storage: Any, key: str, retain_until: datetime | None) -> dict[str, Any]:
    if retain_until is None:
        return {}
    blob = storage._bucket.blob(storage._full(key))
    if getattr(storage._bucket, "object_retention_mode", None) == "Enabled":
        blob.retention.mode = "Unlocked"
        blob.retention.retain_until_time = retain_until
        blob.patch(override_unlocked_retention=True)
        return {"lock": "retention"}
    blob.temporary_hold = True
    blob.patch()
    return {"lock": "temporary_hold"}


def protect(storage: Storage, keys: Iterable[str], *, storage_class: str | None, retain_until: datetime | None) -> str:
    """Give ``keys`` on ``storage`` their archive class and lock; returns what was applied, for the record."""
    keys = list(keys)
    if storage.kind == "s3":
        until = retain_until if retain_until is not None and _s3_lock_enabled(storage) else None
        for key in keys:
            _protect_s3(storage, key, storage_class, until)
        lock = "Object Lock GOVERNANCE" if until else "none (bucket without Object Lock)" if retain_until else "none"
        return f"class {storage_class or 'bucket default'}, lock {lock}"
    if storage.kind == "gcs":
        applied = {}
        for key in keys:
            applied = _protect_gcs(storage, key, retain_until)
        return f"class {storage_class or 'bucket default'} (set at upload), lock {applied.get('lock', 'none')}"
    return "local disk: no storage class or lock"


def _release_gcs_holds(storage: Any, keys: list[str]) -> None:
    for key in keys:
        blob = storage._bucket.get_blob(storage._full(key))
        if blob is not None and blob.temporary_hold:
            blob.temporary_hold = False
            blob.patch()


# --- the command -----------------------------------------------------------------------------------------
def run_archive(
    cat: Catalog,
    source: PgTarget,
    storages: list[Storage],
    keyring: Keyring,
    *,
    backup_id: str,
    archive: ArchivePolicy,
    options: ExportOptions,
    verdict: Rule321Verdict,
    warnings: list[str],
    now: datetime,
    actor: str,
    dag_id: str | None = None,
    run_id: str | None = None,
    roles: Mapping[str, str] | None = None,
    files: FilesWorld | None = None,
) -> dict[str, Any]:
    """Export, copy to every archive target, class and lock, verify every copy, commit, record. All or nothing.

    ``files``: the files component's world (None: off); the archive's file state is captured onto its targets."""
    retain_until = now + timedelta(days=archive.retention_days)
    fresh = cat.start_backup(
        backup_id=backup_id,
        backup_type="archive",
        created_by=actor,
        rule_321=verdict.as_dict(),
        warnings=warnings,
        retention_until=retain_until,
        dag_id=dag_id,
        run_id=run_id,
        reason=f"weekly archive: its own export, kept {archive.retention_days} days",
    )
    if not fresh:
        return {"backup_id": backup_id, "status": "completed", "already": True}
    for s in storages:
        if s.kind == "gcs":  # set at upload: a GCS object's class is not rewritten later
            s.storage_class = archive.storage_class.get(s.name)  # type: ignore[attr-defined]
    try:
        roles = dict(roles or {s.name: s.name for s in storages})  # target name -> its role in the policy
        m = _export_with_files(cat, source, storages, keyring, backup_id, options, dag_id, run_id, retain_until, files)
        return _archive(cat, m, storages, keyring, backup_id, archive, retain_until, roles)
    except BaseException as e:
        cat.fail_backup(backup_id, f"weekly archive failed: {e}")
        raise


def _export_with_files(
    cat: Catalog,
    source: PgTarget,
    storages: list[Storage],
    keyring: Keyring,
    backup_id: str,
    options: ExportOptions,
    dag_id: str | None,
    run_id: str | None,
    retain_until: datetime,
    files: FilesWorld | None,
) -> Manifest:
    """The archive's own export to its first target, and its file state read in the export's snapshot."""
    first = storages[0]
    extra = {"dag_id": dag_id, "run_id": run_id, "archive": {"source": "own export", "until": retain_until.isoformat()}}
    snapshot = ExportSnapshot(source) if files is not None else None
    if snapshot is not None:
        options = dataclasses.replace(options, on_snapshot=snapshot.attach)
    try:
        m = run_export(source, first, keyring, backup_id=backup_id, backup_type="archive", options=options, extra=extra)
        if files is not None and m.files is None:
            m = capture_into(dataclasses.replace(files, storages=list(storages), snapshot=snapshot), m, cat)
    finally:
        if snapshot is not None:
            snapshot.close()
    return m


def _archive(
    cat: Catalog,
    m: Manifest,
    storages: list[Storage],
    keyring: Keyring,
    backup_id: str,
    archive: ArchivePolicy,
    retain_until: datetime,
    roles: Mapping[str, str],
) -> dict[str, Any]:
    first = storages[0]
    for dst in storages[1:]:
        replicate(m, first, dst)
    lock_until = retain_until if archive.lock else None
    keys = [o.key for o in m.objects()]
    applied = {
        s.name: protect(s, keys, storage_class=archive.storage_class.get(s.name), retain_until=lock_until)
        for s in storages
    }
    replicas = verify_copies(m, storages, keyring)
    write_commit_marker(m, storages, pending_on=storages[0])
    for s in storages:
        protect(s, [manifest_key(backup_id)], storage_class=archive.storage_class.get(s.name), retain_until=lock_until)
    cat.complete_backup(m, m.sha256(), replicas, retain_until, roles=roles)
    log.info(
        "Archive %s completed on %s, kept until %s: %s",
        backup_id,
        [s.name for s in storages],
        retain_until.date(),
        applied,
    )
    return {
        "backup_id": backup_id,
        "status": "completed",
        "source": "own export",
        "retention_until": retain_until.isoformat(),
        "targets": applied,
        "rows": m.total_rows,
        "stored_bytes": m.stored_bytes,
    }


def prune_archives(
    cat: Catalog, storages: list[Storage], *, retention_days: int, now: datetime
) -> dict[str, list[str]]:
    """Remove archives past their retention (never the newest); GCS holds are released first."""
    pruned: dict[str, list[str]] = {}
    for s in storages:
        ids = select_prunable(committed_manifests(s), now=now, retention_days=retention_days, backup_type="archive")
        for backup_id in ids:
            if s.kind == "gcs":
                _release_gcs_holds(s, [o.key for o in s.list(f"backups/{backup_id}/")])
            delete_backup(s, backup_id)
        pruned[s.name] = ids
    for backup_id in sorted({i for ids in pruned.values() for i in ids}):
        cat.delete_backup_rows(backup_id, actor="archive-retention")
    return pruned
