"""The content store: each file's bytes once per repository, under its SHA-256, encrypted, on every target.

A content object is shared by every backup whose file state lists it, so it cannot use one backup's data
key: it gets its own (the same envelope format, chunked AES-256-GCM, wrapped by the master key and kept in
the object's header), bound to its content address. It is written only after its bytes hashed to the
checksum the database records (a corrupt source object never lands), copied as ciphertext to the other
targets, and verified on each. An existing content object is never rewritten: backups that list it
recorded its stored checksum.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterable, Iterator

from wedsync_backup.crypto import DataKey, Keyring
from wedsync_backup.manifest import StoredObject
from wedsync_backup.pipeline import encode_to_storage
from wedsync_backup.replicate import copy_object
from wedsync_backup.storage.base import Storage
from wedsync_backup.verify import verify_object

log = logging.getLogger(__name__)
CONTENT_PREFIX = "files/content/"
ZSTD_LEVEL = 1  # photos and PDFs barely compress: spend little time trying


def content_key(sha256: str) -> str:
    return f"{CONTENT_PREFIX}{sha256[:2]}/{sha256}"


def content_scope(sha256: str) -> str:
    """What a content object's data key and header are bound to (in place of a backup id)."""
    return f"files-content-{sha256}"


def present(storage: Storage) -> dict[str, int]:
    """Content hash -> stored size of every content object on ``storage`` (one listing, no reads)."""
    return {o.key.rsplit("/", 1)[-1]: o.size for o in storage.list(CONTENT_PREFIX)}


class SourceMismatch(Exception):
    """The source object's bytes are not what the files table records (size or SHA-256)."""


def _checked(chunks: Iterable[bytes], sha256: str, size: int | None, path: str) -> Iterator[bytes]:
    h, n = hashlib.sha256(), 0
    for piece in chunks:
        h.update(piece)
        n += len(piece)
        yield piece
    if (size is not None and n != size) or h.hexdigest() != sha256:
        # raised inside the writer: the upload is aborted, nothing lands under the content key
        raise SourceMismatch(
            f"{path}: read {n} bytes with sha256 {h.hexdigest()}, the files table says "
            f"{size} bytes with sha256 {sha256}"
        )


def hash_source(source: Storage, path: str, sha256: str, size: int | None) -> None:
    """Read a source object through, checking it against its row (raises SourceMismatch)."""
    for _ in _checked(source.read(path), sha256, size, path):
        pass


def upload(
    source: Storage, path: str, sha256: str, size: int | None, primary: Storage, keyring: Keyring
) -> tuple[StoredObject, str]:
    """Stream one source object, checked against its row, into the content store on ``primary``.

    Returns the stored object and its data key (base64), which the file state keeps, encrypted under the
    backup's own data key: a retired master key then never strands a content object (``remember_key``).
    """
    data_key = keyring.new_data_key(content_scope(sha256))
    chunks = _checked(source.read(path), sha256, size, path)
    stored = encode_to_storage(chunks, primary, content_key(sha256), data_key, zstd_level=ZSTD_LEVEL)
    return stored.stored_object(), base64.b64encode(data_key.key).decode()


def remember_key(keyring: Keyring, sha256: str, data_key_b64: str | None) -> None:
    """Let ``keyring`` open a content object with the data key its file state recorded, should the master
    key that wrapped it in the object's header be retired (the header's wrapped key is tried first)."""
    if data_key_b64:
        key = base64.b64decode(data_key_b64)
        keyring.remember(DataKey(key=key, key_id="file-state", backup_id=content_scope(sha256), wrapped={}))


def stored_info(storage: Storage, sha256: str, size: int, keyring: Keyring) -> StoredObject:
    """The stored size and checksum of a content object already on ``storage`` (verified by decrypting it)."""
    key = content_key(sha256)
    h = hashlib.sha256()
    n = 0
    for piece in storage.read(key):
        h.update(piece)
        n += len(piece)
    obj = StoredObject(key, n, h.hexdigest(), size, sha256)
    verify_object(storage, obj, keyring, content_scope(sha256), True)
    return obj


def replicate_content(obj: StoredObject, have: Storage, missing: list[Storage], keyring: Keyring) -> None:
    """Copy a content object's ciphertext to the targets that lack it, then verify every copy made."""
    for dst in missing:
        copy_object(have, dst, obj)
        verify_object(dst, obj, keyring, content_scope(obj.plain_sha256), False)


def verify_content(obj: StoredObject, storage: Storage, keyring: Keyring) -> None:
    """Size, stored checksum and authenticated decryption of one content object on one target."""
    verify_object(storage, obj, keyring, content_scope(obj.plain_sha256), False)
