"""Copy a backup's encrypted objects from one target to another.

Replication moves ciphertext only: it never needs the key and plaintext never exists. An object already
present on the destination with the right size and checksum is skipped, so a retry resumes cheaply.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from wedsync_backup.errors import IntegrityError
from wedsync_backup.manifest import Manifest, StoredObject, backup_prefix
from wedsync_backup.parallel import each_object
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)


@dataclass
class ReplicationResult:
    target: str
    copied: int
    skipped: int
    bytes_copied: int

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def copy_object(src: Storage, dst: Storage, obj: StoredObject) -> None:
    h = hashlib.sha256()
    n = 0
    with dst.writer(obj.key) as w:
        for piece in src.read(obj.key):
            h.update(piece)
            n += len(piece)
            w.write(piece)
        if n != obj.stored_bytes or h.hexdigest() != obj.stored_sha256:
            # raising inside the writer aborts it: nothing damaged lands on the destination
            raise IntegrityError(
                f"Object {obj.key} on source target {src.name} does not match the manifest",
                f"read {n} bytes with sha256 {h.hexdigest()[:16]}..., expected {obj.stored_bytes} bytes",
                "the primary copy is damaged: re-run the backup",
            )


def replicate(
    manifest: Manifest,
    src: Storage,
    dst: Storage,
    *,
    skip_verified: bool = True,
    workers: int = 1,
    trust_sizes: bool = False,
) -> ReplicationResult:
    """Copy every object; ``workers`` > 1 copies that many at once (many small objects: a wedding backup).

    ``trust_sizes``: an object already there with the right size is not read back here, because every copy is
    verified byte for byte right after (the full backup, whose export already wrote the replicas)."""

    # many objects: one listing says what is there already, instead of a request per object
    many = workers > 1 or trust_sizes
    listed = {o.key: o.size for o in dst.list(backup_prefix(manifest.backup_id))} if many else None

    def one(obj: StoredObject) -> bool:
        size = listed.get(obj.key) if listed is not None else dst.size(obj.key)
        same = size == obj.stored_bytes and (trust_sizes or _sha256(dst, obj.key) == obj.stored_sha256)
        if skip_verified and same:
            return False
        copy_object(src, dst, obj)
        return True

    objects = manifest.objects()
    done = list(each_object(one, objects, workers))
    copied = sum(done)
    skipped = len(done) - copied
    nbytes = sum(o.stored_bytes for o, c in zip(objects, done, strict=True) if c)
    log.info("Replicated %s to %s: %d copied, %d already there", manifest.backup_id, dst.name, copied, skipped)
    return ReplicationResult(dst.name, copied, skipped, nbytes)


def _sha256(storage: Storage, key: str) -> str:
    h = hashlib.sha256()
    for piece in storage.read(key):
        h.update(piece)
    return h.hexdigest()
