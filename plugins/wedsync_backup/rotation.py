"""Master key rotation: re-wrap every retained backup's data key under the active master key, on every target.

Only the manifest changes: its ``encryption`` section gets the data key wrapped under the active key, and
it is re-authenticated (its MAC is under the data key, which does not change). Objects are not rewritten:
their chunks stay sealed under the same data key, which a reader takes from the authenticated manifest. Each
target's manifest is replaced atomically, read back, and the copy verified with the active key alone; then
the catalog records the new manifest checksum. So, once a rotation has finished, the retired key can be
removed from the connection and every backup still restores.

Resumable: a copy already rotated is recognised (its manifest names the active key and authenticates), and
the very same manifest bytes are reused for the copies not done yet, so every copy ends identical. Before
anything is written, every key the rotation needs is checked: a missing one is refused, named.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError, IntegrityError, StorageError, WedSyncError
from wedsync_backup.manifest import Manifest, manifest_key
from wedsync_backup.restore import verify_manifest_mac
from wedsync_backup.storage.base import Storage
from wedsync_backup.verify import verify_copy

log = logging.getLogger(__name__)


@dataclass
class RotationResult:
    active_key_id: str
    dry_run: bool
    to_rotate: dict[str, list[str]] = field(default_factory=dict)  # backup id -> targets still on an old key
    rotated: dict[str, list[str]] = field(default_factory=dict)  # backup id -> targets rewritten by this run
    already: list[str] = field(default_factory=list)  # backups already on the active key everywhere
    old_key_ids: dict[str, str] = field(default_factory=dict)  # backup id -> the key it was on
    skipped: dict[str, str] = field(default_factory=dict)  # backups that could not be rotated, and why

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Copy:
    target: str
    manifest: Manifest
    data: bytes


def _read(storage: Storage, backup_id: str) -> _Copy | None:
    key = manifest_key(backup_id)
    if not storage.exists(key):
        return None
    data = storage.get_bytes(key)
    return _Copy(storage.name, Manifest.from_bytes(data, source=f"manifest of {backup_id} on {storage.name}"), data)


def retained_backups(cat: Catalog) -> list[dict[str, Any]]:
    """Backups whose copies are kept (completed or damaged, not pruned), oldest first."""
    with cat.connect() as conn:
        return conn.execute(
            "SELECT backup_id, checksum, status, key_id FROM backup_operations"
            " WHERE status IN ('completed', 'damaged') AND pruned_at IS NULL ORDER BY snapshot_time, backup_id"
        ).fetchall()


def survey(
    cat: Catalog, storages: dict[str, Storage], keyring: Keyring
) -> tuple[RotationResult, dict[str, list[_Copy]]]:
    """What a rotation would change; raises, naming them, when keys it needs are missing. Touches nothing."""
    result = RotationResult(keyring.active_id, dry_run=True)
    copies: dict[str, list[_Copy]] = {}
    missing: dict[str, list[str]] = {}
    for row in retained_backups(cat):
        backup_id = row["backup_id"]
        if row["status"] == "damaged":
            result.skipped[backup_id] = "damaged (no intact copy): nothing to rotate"
            continue
        found = [c for s in storages.values() if (c := _read(s, backup_id)) is not None]
        copies[backup_id] = found
        old = [c for c in found if c.manifest.encryption.get("key_id") != keyring.active_id]
        if not old:
            if all(hashlib.sha256(c.data).hexdigest() == row["checksum"] for c in found):
                result.already.append(backup_id)
            else:  # every copy rotated by an interrupted run that did not reach the catalog
                result.to_rotate[backup_id] = []
                result.old_key_ids[backup_id] = row["key_id"] or "?"
            continue
        result.to_rotate[backup_id] = [c.target for c in old]
        key_id = old[0].manifest.encryption.get("key_id", "?")
        result.old_key_ids[backup_id] = key_id
        if key_id not in keyring.key_ids:
            missing.setdefault(key_id, []).append(backup_id)
    if missing:
        listing = "; ".join(
            f"{k} (backups {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})" for k, ids in missing.items()
        )
        raise ConfigError(
            f"Key rotation needs master key(s) {', '.join(sorted(missing))}, which connection {keyring.source} "
            "does not hold",
            f"their backups cannot be re-wrapped without them: {listing}",
            f"put those keys back in the extra 'previous_keys' of {keyring.source}, run the rotation, and remove "
            "them only after it has finished",
        )
    return result, copies


def _rotated_bytes(backup_id: str, copies: list[_Copy], keyring: Keyring, checksum: str) -> bytes:
    """The rotated manifest: the one a resumed run already wrote if any, else re-wrapped now."""
    for c in copies:
        if c.manifest.encryption.get("key_id") == keyring.active_id:
            verify_manifest_mac(c.manifest, keyring)  # a rotated copy from an interrupted run: reuse it
            return c.data
    source = next((c for c in copies if hashlib.sha256(c.data).hexdigest() == checksum), None)
    if source is None:
        raise IntegrityError(
            f"No copy of backup {backup_id} holds the manifest the catalog recorded",
            "every manifest found differs from the catalog's checksum",
            "run backup_scrub for this backup first",
        )
    manifest = source.manifest
    verify_manifest_mac(manifest, keyring)
    data_key = keyring.unwrap(manifest.encryption["wrapped_key"], backup_id)
    manifest.encryption = {**manifest.encryption, "key_id": keyring.active_id, "wrapped_key": keyring.rewrap(data_key)}
    manifest.mac = data_key.mac(manifest.body_bytes())
    return manifest.to_bytes()


def _record(cat: Catalog, backup_id: str, sha: str, key_id: str, old_key_id: str, actor: str, reason: str) -> None:
    with cat.connect() as conn:
        conn.execute(
            "UPDATE backup_operations SET checksum = %s, key_id = %s, key_rotated_at = now() WHERE backup_id = %s",
            (sha, key_id, backup_id),
        )
        conn.execute(
            "UPDATE backup_replicas SET manifest_sha256 = %s, verified_at = now(), updated_at = now()"
            " WHERE backup_id = %s",
            (sha, backup_id),
        )
    cat.audit(
        "key_rotated",
        actor=actor,
        backup_id=backup_id,
        details={"from_key_id": old_key_id, "to_key_id": key_id, "manifest_sha256": sha, "reason": reason},
        key=f"key_rotated:{backup_id}:{key_id}",
    )


def rotate_keys(
    cat: Catalog,
    storages: dict[str, Storage],
    keyring: Keyring,
    *,
    dry_run: bool,
    actor: str,
    reason: str,
    on_copy_rotated: Callable[[str, str], None] | None = None,
) -> RotationResult:
    """Re-wrap every retained backup's data key under the active master key on every target."""
    result, copies = survey(cat, storages, keyring)
    result.dry_run = dry_run
    if dry_run:
        log.info(
            "Dry run: %d backups would be re-wrapped under %s: %s",
            len(result.to_rotate),
            keyring.active_id,
            result.to_rotate,
        )
        return result
    checksums = {r["backup_id"]: r["checksum"] for r in retained_backups(cat)}
    proof = keyring.only_active()
    for backup_id, targets in result.to_rotate.items():
        try:
            data = _rotated_bytes(backup_id, copies[backup_id], keyring, checksums[backup_id])
        except WedSyncError as e:
            result.skipped[backup_id] = str(e)
            log.error("Backup %s not rotated: %s", backup_id, e)
            continue
        manifest = Manifest.from_bytes(data, source=f"rotated manifest of {backup_id}")
        for name in targets:
            storage = storages[name]
            if storage.get_bytes(manifest_key(backup_id)) != data:
                storage.put_bytes(manifest_key(backup_id), data)  # atomic: the old or the new, never half
            if storage.get_bytes(manifest_key(backup_id)) != data:
                raise StorageError(
                    f"The rotated manifest of {backup_id} did not read back intact from {name}",
                    fix="check the target and run rotate_keys again (it resumes)",
                )
            verify_copy(manifest, storage, proof)  # restorable with the active key alone
            result.rotated.setdefault(backup_id, []).append(name)
            log.info("Rotated %s on %s to %s", backup_id, name, keyring.active_id)
            if on_copy_rotated is not None:
                on_copy_rotated(backup_id, name)
        _record(
            cat,
            backup_id,
            hashlib.sha256(data).hexdigest(),
            keyring.active_id,
            result.old_key_ids[backup_id],
            actor,
            reason,
        )
    return result


def record_rotation_run(
    cat: Catalog,
    *,
    active_key_id: str,
    dry_run: bool,
    reason: str,
    triggered_by: str,
    dag_id: str | None,
    run_id: str | None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """The ``key_rotations`` row of one run (a retry of the run updates it): what it did, or why it failed."""
    with cat.connect() as conn:
        conn.execute(
            """
            INSERT INTO key_rotations (active_key_id, dry_run, reason, triggered_by, dag_id, run_id, result, error,
                completed_at)
            VALUES (%(key)s, %(dry)s, %(reason)s, %(by)s, %(dag)s, %(run)s, %(result)s, %(error)s,
                CASE WHEN %(done)s THEN now() END)
            ON CONFLICT (dag_id, run_id) WHERE run_id IS NOT NULL DO UPDATE SET
                active_key_id = EXCLUDED.active_key_id, dry_run = EXCLUDED.dry_run, result = EXCLUDED.result,
                error = EXCLUDED.error, completed_at = EXCLUDED.completed_at
            """,
            {
                "key": active_key_id,
                "dry": dry_run,
                "reason": reason,
                "by": triggered_by,
                "dag": dag_id,
                "run": run_id,
                "result": Jsonb(result) if result is not None else None,
                "error": error,
                "done": result is not None or error is not None,
            },
        )
