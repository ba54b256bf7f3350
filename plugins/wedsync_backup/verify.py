"""Verify one copy of a backup: every object's size, checksum, and decryption on read.

``deep`` also decompresses and checks every plaintext checksum (what a restore would check), at the cost of
decompressing the whole backup; a drill restores it anyway.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wedsync_backup.crypto import Keyring, decrypt_stream
from wedsync_backup.errors import IntegrityError, WedSyncError, is_transient
from wedsync_backup.manifest import Manifest, StoredObject, backup_prefix
from wedsync_backup.parallel import each_object
from wedsync_backup.pipeline import check_bundle, decode_from_storage
from wedsync_backup.restore import verify_manifest_mac
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    target_name: str
    kind: str
    medium: str
    site: str
    location: str
    object_count: int
    stored_bytes: int
    verified: bool
    verified_at: str
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def verify_object(
    storage: Storage,
    obj: StoredObject,
    keyring: Keyring,
    backup_id: str,
    deep: bool,
    listed: dict[str, int] | None = None,
    pieces: list[tuple[int, StoredObject]] | None = None,
) -> None:
    """One object's size, checksum and decryption (``deep``: its plaintext too). A bundle (``pieces``) is read
    once and every piece checked down to its plaintext: pieces are small."""
    size = listed.get(obj.key) if listed is not None else storage.size(obj.key)
    if size != obj.stored_bytes:
        raise IntegrityError(
            f"Object {obj.key} on target {storage.name} is {'missing' if size is None else f'{size} bytes'}",
            f"the manifest says {obj.stored_bytes} bytes",
            "re-run the backup's replicate step for this target",
        )
    if pieces:
        check_bundle(storage, obj, pieces, keyring, backup_id=backup_id)
        return
    if deep:
        for _ in decode_from_storage(storage, obj, keyring, backup_id=backup_id):
            pass
        return
    h = hashlib.sha256()

    def hashed():  # type: ignore[no-untyped-def]
        for piece in storage.read(obj.key):
            h.update(piece)
            yield piece

    for _ in decrypt_stream(hashed(), keyring, backup_id=backup_id, object_name=obj.key, where=storage.name):
        pass
    if h.hexdigest() != obj.stored_sha256:
        raise IntegrityError(
            f"Object {obj.key} on target {storage.name} has the wrong checksum",
            f"expected {obj.stored_sha256}, found {h.hexdigest()}",
            "re-run the backup's replicate step for this target",
        )


def verify_named(
    storage: Storage,
    obj: StoredObject,
    keyring: Keyring,
    backup_id: str,
    deep: bool = False,
    listed: dict[str, int] | None = None,
    pieces: list[tuple[int, StoredObject]] | None = None,
) -> None:
    """``verify_object``, with a storage or network fault reported as this object on this target."""
    try:
        verify_object(storage, obj, keyring, backup_id, deep, listed, pieces)
    except WedSyncError:
        raise
    except Exception as e:
        raise IntegrityError(
            f"Could not verify object {obj.key} on target {storage.name}",
            str(e),
            "check the target",
            transient=is_transient(e),  # a dropped connection is retried; damaged data is not
        ) from e


def verify_copy(
    manifest: Manifest,
    storage: Storage,
    keyring: Keyring,
    *,
    deep: bool = False,
    workers: int = 1,
    already: Mapping[str, StoredObject] | None = None,
) -> VerifyResult:
    """Check every object of ``manifest`` on ``storage``; raise on the first fault, naming it. ``workers`` > 1
    checks that many objects at once (many small objects: a wedding backup). ``already``: objects this run
    read back from this target and verified (the full backup does it while its export goes on); one the
    manifest lists exactly so (same key, size and checksum) is not read again."""
    verify_manifest_mac(manifest, keyring)
    objects = manifest.objects()
    earlier = {o.key for o in objects if already is not None and already.get(o.key) == o}
    pieces = manifest.pieces()
    # many objects: one listing gives every size, instead of a request per object
    listed = {o.key: o.size for o in storage.list(backup_prefix(manifest.backup_id))} if workers > 1 else None

    def one(obj: StoredObject) -> None:
        verify_named(storage, obj, keyring, manifest.backup_id, deep, listed, pieces.get(obj.key))

    for _ in each_object(one, [o for o in objects if o.key not in earlier], workers):
        pass
    log.info(
        "Verified %d objects of %s on %s%s",
        len(objects),
        manifest.backup_id,
        storage.name,
        f" ({len(earlier)} of them while the export ran)" if earlier else "",
    )
    return VerifyResult(
        target_name=storage.name,
        kind=storage.kind,
        medium=storage.medium,
        site=storage.site,
        location=storage.url(f"backups/{manifest.backup_id}/"),
        object_count=len(objects),
        stored_bytes=sum(o.stored_bytes for o in objects),
        verified=True,
        verified_at=datetime.now(UTC).isoformat(),
    )


def verify_copies(manifest: Manifest, storages: list[Storage], keyring: Keyring) -> list[dict[str, Any]]:
    """Verify every copy in turn; the catalog's replica rows (a backup counts only when all of them verify)."""
    replicas = []
    for storage in storages:
        r = verify_copy(manifest, storage, keyring).as_dict()
        r["manifest_sha256"] = manifest.sha256()
        r["verified_at"] = datetime.fromisoformat(r["verified_at"])
        replicas.append(r)
    return replicas
