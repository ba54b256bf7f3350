"""Writing files back: each object of a file state, decrypted from the content store into a target bucket.

An object already there with the right SHA-256 is skipped; every object written is read back and checked
against its SHA-256. Objects are written one by one, atomically (a half-written object is never visible).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.files.content import content_scope, remember_key
from wedsync_backup.files.state import FileEntry
from wedsync_backup.heap import give_back
from wedsync_backup.pipeline import decode_from_storage
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)


@dataclass
class FilesRestoreResult:
    objects: int = 0  # objects the state lists (restorable ones)
    bytes: int = 0
    to_write: int = 0  # not already in the target with the right checksum
    bytes_to_write: int = 0
    written: int = 0
    skipped: int = 0
    dry_run: bool = False
    never_captured: list[str] = field(default_factory=list)  # paths whose object was never captured intact

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sha256_of(storage: Storage, key: str) -> str:
    h = hashlib.sha256()
    for piece in storage.read(key):
        h.update(piece)
    return h.hexdigest()


def _already_there(target: Storage, e: FileEntry) -> bool:
    return target.size(e.path) == e.size and sha256_of(target, e.path) == e.sha256


def write_one(e: FileEntry, repo: Storage, target: Storage, keyring: Keyring) -> None:
    """Decrypt one object from the content store into ``target`` (atomic), then check what landed."""
    assert e.sha256 is not None
    remember_key(keyring, e.sha256, e.data_key)
    with target.writer(e.path) as w:
        for piece in decode_from_storage(repo, e.content(), keyring, backup_id=content_scope(e.sha256)):
            w.write(piece)
    got = sha256_of(target, e.path)
    if got != e.sha256:
        raise IntegrityError(
            f"File {e.path} written to {target.url(e.path)} reads back with sha256 {got}",
            f"it was written with sha256 {e.sha256}",
            "check the target bucket and run the restore again (objects already right are skipped)",
        )


def write_objects(
    entries: Iterable[FileEntry], repo: Storage, target: Storage, keyring: Keyring, *, dry_run: bool = False
) -> FilesRestoreResult:
    """Write every restorable entry to ``target`` (a dry run counts what would be written)."""
    r = FilesRestoreResult(dry_run=dry_run)
    for e in entries:
        if not e.restorable:
            r.never_captured.append(e.path)
            continue
        r.objects += 1
        r.bytes += int(e.size or 0)
        if _already_there(target, e):
            r.skipped += 1
            continue
        r.to_write += 1
        r.bytes_to_write += int(e.size or 0)
        if not dry_run:
            write_one(e, repo, target, keyring)
            give_back(int(e.size or 0))  # one object after another, each a few MB: keep the resident set flat
            r.written += 1
    log.info(
        "Files %s: %d objects (%d bytes) in the state, %d %s (%d bytes), %d already there",
        "dry run" if dry_run else "restore",
        r.objects,
        r.bytes,
        r.to_write,
        "would be written" if dry_run else "written",
        r.bytes_to_write,
        r.skipped,
    )
    return r
