"""Re-reading the shared content store: what the scrub and the restore drill check of the files.

Content objects are shared by every backup whose file state lists them, so the per-backup verify never reads
them again after the capture. Here: every copy's content objects are checked for existence and size from one
listing per target; a rotating window of them is read back in full (decrypted, decompressed, the plaintext's
SHA-256 compared with its address) each run, so the whole store is re-read every ``ceil(n / sample)`` runs; a
damaged copy is repaired from a copy that reads back intact (ciphertext copied, then read back again). The
drill reads back the content objects of the drilled backup's file state from the copy it restored from.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import CryptoError, IntegrityError, StorageError, WedSyncError
from wedsync_backup.files.content import content_key, content_scope, present, remember_key
from wedsync_backup.files.state import FileEntry, state_at
from wedsync_backup.heap import give_back
from wedsync_backup.manifest import Manifest, StoredObject
from wedsync_backup.pipeline import decode_from_storage
from wedsync_backup.replicate import copy_object
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
SCRUB_SAMPLE = 50  # content objects read back in full per target per scrub run
DRILL_SAMPLE = 200  # content objects of the drilled backup read back (all when it lists fewer)
DAMAGE = (IntegrityError, CryptoError, StorageError)  # a missing object reads as a StorageError


def read_back(storage: Storage, obj: StoredObject, keyring: Keyring) -> None:
    """Read one content object through: stored size and SHA-256, authenticated decryption, plaintext SHA-256
    equal to its content address (raises IntegrityError / CryptoError / StorageError naming it)."""
    try:
        for _ in decode_from_storage(storage, obj, keyring, backup_id=content_scope(obj.plain_sha256)):
            pass
    finally:
        give_back(obj.stored_bytes)  # many objects in a row: the resident set stays flat


def rotating_window(items: list[Any], size: int, turn: int) -> list[Any]:
    """``size`` consecutive items (wrapping) starting where run ``turn`` is due: every item within
    ``ceil(len / size)`` consecutive turns."""
    if size >= len(items):
        return list(items)
    start = (turn * size) % len(items)
    return (items + items)[start : start + size]


@dataclass
class ContentScrub:
    contents: int = 0  # content objects the catalog records
    read_back: int = 0  # full read-backs done (all targets)
    bytes_read: int = 0
    findings: list[str] = field(default_factory=list)  # damaged or missing copies found
    repaired: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # content objects with no intact copy left
    unreachable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _listed(storages: dict[str, Storage], out: ContentScrub) -> dict[str, dict[str, int]]:
    listed = {}
    for name, s in storages.items():
        try:
            listed[name] = present(s)
        except WedSyncError as e:  # a target down is reported, never taken for damage
            out.unreachable.append(f"{name}: {e}")
            log.error("Content scrub could not list %s: %s", name, e)
    return listed


def _repair(obj: StoredObject, bad: str, storages: dict[str, Storage], keyring: Keyring, good: set[str]) -> str | None:
    """Rewrite the ``bad`` copy from a copy that reads back intact now; the source's name, or None."""
    for name in sorted(good - {bad}):
        try:
            read_back(storages[name], obj, keyring)
            copy_object(storages[name], storages[bad], obj)
            read_back(storages[bad], obj, keyring)
        except WedSyncError as e:
            log.warning("Content %s: repairing %s from %s failed: %s", obj.plain_sha256, bad, name, e)
            continue
        return name
    return None


def scrub_contents(
    contents: Iterable[StoredObject],
    storages: dict[str, Storage],
    keyring: Keyring,
    *,
    now: datetime,
    sample: int = SCRUB_SAMPLE,
) -> ContentScrub:
    """Check every copy of the content store (``contents``: what the catalog records) and repair it."""
    objects = sorted(contents, key=lambda o: o.plain_sha256)
    out = ContentScrub(contents=len(objects))
    if not objects:
        return out
    listed = _listed(storages, out)
    bad: dict[str, dict[str, str]] = {}  # content hash -> target -> what is wrong
    for o in objects:
        for name, there in listed.items():
            size = there.get(o.plain_sha256)
            if size != o.stored_bytes:
                why = "missing" if size is None else f"{size} bytes, the catalog records {o.stored_bytes}"
                bad.setdefault(o.plain_sha256, {})[name] = why
    for o in rotating_window(objects, max(1, sample), now.toordinal()):
        for name in listed:
            if name in bad.get(o.plain_sha256, {}):
                continue
            try:
                read_back(storages[name], o, keyring)
                out.read_back += 1
                out.bytes_read += o.stored_bytes
            except DAMAGE as e:
                bad.setdefault(o.plain_sha256, {})[name] = str(e)
    by_sha = {o.plain_sha256: o for o in objects}
    for sha, targets in sorted(bad.items()):
        obj = by_sha[sha]
        good = set(listed) - set(targets)
        for name, why in sorted(targets.items()):
            out.findings.append(f"content object {content_key(sha)} on {name}: {why}")
            log.error("Scrub: content object %s on %s is damaged: %s", content_key(sha), name, why)
            source = _repair(obj, name, storages, keyring, good)
            if source is not None:
                out.repaired.append(f"{content_key(sha)} on {name} from {source}")
                log.warning("Scrub repaired content object %s on %s from %s", content_key(sha), name, source)
        if not good and len(listed) == len(storages):  # an unreachable target may still hold it
            out.lost.append(content_key(sha))
    log.info(
        "Content scrub: %d content objects, %d read back in full, %d damaged copies (%d repaired), %d lost",
        out.contents,
        out.read_back,
        len(out.findings),
        len(out.repaired),
        len(out.lost),
    )
    return out


def drill_files(
    storage: Storage,
    manifests: list[Manifest],
    manifest: Manifest,
    keyring: Keyring,
    *,
    sample: int = DRILL_SAMPLE,
    rng: random.Random | None = None,
) -> tuple[int, list[str]]:
    """Read back (a random sample of) the content objects of ``manifest``'s file state from ``storage``;
    returns how many were read and the problems, each naming the object and the file."""
    state = state_at(storage, manifests, manifest.backup_id, keyring)
    entries: list[FileEntry] = sorted((e for e in state.values() if e.restorable), key=lambda e: e.path)
    by_sha = {e.sha256: e for e in entries}  # one read per content object
    chosen = list(by_sha.values())
    if len(chosen) > sample:
        chosen = (rng or random.Random()).sample(chosen, sample)
    problems = []
    for e in chosen:
        assert e.sha256 is not None
        remember_key(keyring, e.sha256, e.data_key)
        try:
            read_back(storage, e.content(), keyring)
        except DAMAGE as err:
            problems.append(f"content object {content_key(e.sha256)} (file {e.path}) on {storage.name}: {err}")
    return len(chosen), problems
