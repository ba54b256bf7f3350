"""The streaming pipeline every backup object goes through: plaintext -> zstd -> AES-256-GCM -> storage.

Memory is bounded by a few chunks whatever the object's size, plaintext exists only in memory, and both
ends are hashed on the way (the plaintext checksum proves content, the stored checksum proves the copy).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import zstandard

from wedsync_backup.crypto import DataKey, Keyring, ObjectEncryptor, decrypt_stream
from wedsync_backup.errors import IntegrityError
from wedsync_backup.manifest import StoredObject
from wedsync_backup.policy import DEFAULT_ZSTD_LEVEL
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
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
) -> EncodeResult:
    """Compress, encrypt and stream ``chunks`` to ``storage[key]`` atomically; return sizes and checksums."""
    with storage.writer(key) as w:
        return _encode(chunks, w.write, key, key, data_key, zstd_level)


def _encode(
    chunks: Iterable[bytes], write: Callable[[bytes], None], key: str, name: str, data_key: DataKey, zstd_level: int
) -> EncodeResult:
    """One encrypted stream (sealed under ``name``) into ``write``."""
    plain_hash, stored_hash = hashlib.sha256(), hashlib.sha256()
    plain_n = stored_n = newlines = 0
    compressor = zstandard.ZstdCompressor(level=zstd_level).compressobj()
    encryptor = ObjectEncryptor(data_key, name)

    def emit(data: bytes) -> None:
        nonlocal stored_n
        if data:
            stored_hash.update(data)
            stored_n += len(data)
            write(data)

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


def piece_name(key: str, offset: int) -> str:
    """What a bundle's piece is sealed under: its bundle and its place in it (a piece moved fails to decrypt)."""
    return f"{key}@{offset}"


class BundleWriter:
    """Many small objects as the pieces of ONE stored object: one write request per bundle, not per piece
    (pgBackRest's repo-bundle does the same for small files). Each piece is its own encrypted stream, read
    back alone with a ranged read (``decode_from_storage(..., offset=)``). Atomic like any writer: use it as
    a context manager; ``bundle`` describes the whole object once it has committed."""

    def __init__(self, storage: Storage, key: str, data_key: DataKey, *, zstd_level: int = DEFAULT_ZSTD_LEVEL) -> None:
        self.key = key
        self._writer = storage.writer(key)
        self._data_key = data_key
        self._level = zstd_level
        self._hash = hashlib.sha256()
        self._size = 0
        self._plain: list[EncodeResult] = []
        self.bundle: StoredObject | None = None

    def _write(self, data: bytes) -> None:
        self._hash.update(data)
        self._size += len(data)
        self._writer.write(data)

    def add(self, chunks: Iterable[bytes]) -> tuple[int, EncodeResult]:
        """Append one piece; its offset in the bundle and its sizes and checksums."""
        offset = self._size
        result = _encode(chunks, self._write, self.key, piece_name(self.key, offset), self._data_key, self._level)
        self._plain.append(result)
        return offset, result

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self._writer.abort()
            return
        self._writer.commit()
        self.bundle = StoredObject(
            key=self.key,
            stored_bytes=self._size,
            stored_sha256=self._hash.hexdigest(),
            plain_bytes=sum(r.plain_bytes for r in self._plain),
            plain_sha256=hashlib.sha256("".join(r.plain_sha256 for r in self._plain).encode()).hexdigest(),
        )


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
    offset: int | None = None,
) -> Iterator[bytes]:
    """Stream the verified plaintext of ``obj`` (with ``offset``: a bundle's piece, ``obj`` describing it).

    Every chunk is authenticated as it is read; at the end the stored and plaintext sizes and checksums
    are compared with the manifest. A consumer must treat its work as committed only once this iterator is
    exhausted without an exception.
    """
    stored = storage.read(obj.key) if offset is None else storage.read_range(obj.key, offset, obj.stored_bytes)
    return decode_stream(stored, obj, keyring, backup_id=backup_id, offset=offset, where=storage, read_size=read_size)


def decode_stream(
    stored: Iterable[bytes],
    obj: StoredObject,
    keyring: Keyring,
    *,
    backup_id: str,
    offset: int | None,
    where: Storage,
    read_size: int = PLAIN_READ,
) -> Iterator[bytes]:
    """``decode_from_storage`` over bytes already being read (a bundle read front to back)."""
    place = f"target {where.name} ({where.url(obj.key)}{'' if offset is None else f' at byte {offset}'})"
    name = obj.key if offset is None else piece_name(obj.key, offset)
    stored_hash, stored_n = hashlib.sha256(), [0]
    plain_hash, plain_n = hashlib.sha256(), 0
    hashed = _hashing(stored, stored_hash, stored_n)
    compressed = decrypt_stream(hashed, keyring, backup_id=backup_id, object_name=name, where=place)
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
            f"Object {name} of backup {backup_id} on {place} does not decompress",
            str(e),
            "restore from another target",
        ) from e
    _check(place, obj, "stored size", stored_n[0], obj.stored_bytes)
    _check(place, obj, "stored checksum", stored_hash.hexdigest(), obj.stored_sha256)
    _check(place, obj, "plaintext size", plain_n, obj.plain_bytes)
    _check(place, obj, "plaintext checksum", plain_hash.hexdigest(), obj.plain_sha256)


def check_bundle(
    storage: Storage, bundle: StoredObject, pieces: list[tuple[int, StoredObject]], keyring: Keyring, *, backup_id: str
) -> None:
    """Read a bundle once, front to back: every piece decrypted, decompressed and checked against its entry,
    the pieces tiling the bundle exactly, and the bundle's own size and checksum."""
    whole, n = hashlib.sha256(), [0]
    stream = iter(_hashing(storage.read(bundle.key), whole, n))
    rest = b""

    def take(size: int) -> Iterator[bytes]:
        nonlocal rest
        while size > 0:
            if not rest:
                rest = next(stream, b"")
                if not rest:
                    return
            piece, rest = rest[:size], rest[size:]
            size -= len(piece)
            yield piece

    place = f"target {storage.name} ({storage.url(bundle.key)})"
    for offset, piece in pieces:
        consumed = n[0] - len(rest)
        if offset != consumed:
            raise IntegrityError(
                f"Bundle {bundle.key} on {place}: a piece starts at byte {offset}, the one before ended at {consumed}",
                "the manifest's pieces do not tile the bundle",
                "this backup is damaged: re-run it",
            )
        for _ in decode_stream(
            take(piece.stored_bytes), piece, keyring, backup_id=backup_id, offset=offset, where=storage
        ):
            pass
    for _ in stream:  # whatever follows the last piece still counts in the bundle's size and checksum
        pass
    _check(place, bundle, "stored size", n[0], bundle.stored_bytes)
    _check(place, bundle, "stored checksum", whole.hexdigest(), bundle.stored_sha256)


def _check(where: str, obj: StoredObject, what: str, got: object, expected: object) -> None:
    if got != expected:
        raise IntegrityError(
            f"Object {obj.key} on {where} has the wrong {what}",
            f"expected {expected}, found {got}",
            "this copy is damaged: restore from another target and re-run the backup",
        )
