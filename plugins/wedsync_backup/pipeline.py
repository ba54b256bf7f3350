"""The streaming pipeline every backup object goes through: plaintext -> zstd -> AES-256-GCM -> storage.

Memory is bounded by a few chunks whatever the object's size, plaintext exists only in memory, and both
ends are hashed on the way (the plaintext checksum proves content, the stored checksum proves the copy).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import zstandard

from wedsync_backup.crypto import DataKey, Keyring, ObjectEncryptor, decrypt_stream
from wedsync_backup.errors import IntegrityError
from wedsync_backup.manifest import StoredObject
from wedsync_backup.storage.base import Storage

PLAIN_READ = 1 << 20


@dataclass
class EncodeResult:
    key: str
    plain_bytes: int
    plain_sha256: str
    stored_bytes: int
    stored_sha256: str
    newlines: int  # rows, for COPY text streams

    def stored_object(self) -> StoredObject:
        return StoredObject(
            key=self.key,
            stored_bytes=self.stored_bytes,
            stored_sha256=self.stored_sha256,
            plain_bytes=self.plain_bytes,
            plain_sha256=self.plain_sha256,
        )


def encode_to_storage(
    chunks: Iterable[bytes],
    storage: Storage,
    key: str,
    data_key: DataKey,
    *,
    zstd_level: int = 3,
) -> EncodeResult:
    """Compress, encrypt and stream ``chunks`` to ``storage[key]`` atomically; return sizes and checksums."""
    plain_hash, stored_hash = hashlib.sha256(), hashlib.sha256()
    plain_n = stored_n = newlines = 0
    compressor = zstandard.ZstdCompressor(level=zstd_level).compressobj()
    encryptor = ObjectEncryptor(data_key, key)

    with storage.writer(key) as w:

        def emit(data: bytes) -> None:
            nonlocal stored_n
            if data:
                stored_hash.update(data)
                stored_n += len(data)
                w.write(data)

        for chunk in chunks:
            if not chunk:
                continue
            chunk = bytes(chunk)
            plain_hash.update(chunk)
            plain_n += len(chunk)
            newlines += chunk.count(b"\n")
            emit(encryptor.update(compressor.compress(chunk)))
        emit(encryptor.update(compressor.flush()))
        emit(encryptor.finalize())

    return EncodeResult(key, plain_n, plain_hash.hexdigest(), stored_n, stored_hash.hexdigest(), newlines)


class _IterReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (what zstd's stream_reader wants)."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self._it = it
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _hashing(it: Iterable[bytes], h: hashlib._Hash, counter: list[int]) -> Iterator[bytes]:
    for piece in it:
        h.update(piece)
        counter[0] += len(piece)
        yield piece


def decode_from_storage(
    storage: Storage,
    obj: StoredObject,
    keyring: Keyring,
    *,
    backup_id: str,
    read_size: int = PLAIN_READ,
) -> Iterator[bytes]:
    """Stream the verified plaintext of ``obj``.

    Every chunk is authenticated as it is read; at the end the stored and plaintext sizes and checksums
    are compared with the manifest. A consumer must treat its work as committed only once this iterator is
    exhausted without an exception.
    """
    where = f"target {storage.name} ({storage.url(obj.key)})"
    stored_hash, stored_n = hashlib.sha256(), [0]
    plain_hash, plain_n = hashlib.sha256(), 0
    stored = _hashing(storage.read(obj.key), stored_hash, stored_n)
    compressed = decrypt_stream(stored, keyring, backup_id=backup_id, object_name=obj.key, where=where)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(_IterReader(compressed), read_across_frames=True)
        while True:
            piece = reader.read(read_size)
            if not piece:
                break
            plain_hash.update(piece)
            plain_n += len(piece)
            yield piece
    except zstandard.ZstdError as e:
        raise IntegrityError(
            f"Object {obj.key} of backup {backup_id} on {where} does not decompress",
            str(e),
            "restore from another target",
        ) from e
    _check(where, obj, "stored size", stored_n[0], obj.stored_bytes)
    _check(where, obj, "stored checksum", stored_hash.hexdigest(), obj.stored_sha256)
    _check(where, obj, "plaintext size", plain_n, obj.plain_bytes)
    _check(where, obj, "plaintext checksum", plain_hash.hexdigest(), obj.plain_sha256)


def _check(where: str, obj: StoredObject, what: str, got: object, expected: object) -> None:
    if got != expected:
        raise IntegrityError(
            f"Object {obj.key} on {where} has the wrong {what}",
            f"expected {expected}, found {got}",
            "this copy is damaged: restore from another target and re-run the backup",
        )
