"""The streaming pipeline (zstd -> AES-256-GCM -> storage) through a real local target: exact, bounded, checked."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from wedsync_backup.crypto import Keyring, ObjectEncryptor
from wedsync_backup.errors import CryptoError, IntegrityError
from wedsync_backup.manifest import StoredObject
from wedsync_backup.pipeline import BundleWriter, EncodeResult, check_bundle, decode_from_storage, encode_to_storage
from wedsync_backup.storage.local import LocalStorage

MiB = 1 << 20
BACKUP = "b-pipe"


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path, name="primary", medium="disk", site="a")


@pytest.fixture
def ring() -> Keyring:
    return Keyring(os.urandom(32))


def encode(chunks: list[bytes], store: LocalStorage, ring: Keyring, key: str = "data/t.wsb") -> EncodeResult:
    return encode_to_storage(iter(chunks), store, key, ring.new_data_key(BACKUP))


def decode(store: LocalStorage, obj: StoredObject, ring: Keyring, backup_id: str = BACKUP) -> bytes:
    return b"".join(decode_from_storage(store, obj, ring, backup_id=backup_id))


@pytest.mark.parametrize(
    "chunks",
    [
        [],
        [b""],
        [b"1\tAda\n"],
        [b"1\tAda\n", b"", b"2\tGrace\n3\tKatherine\n"],
        [os.urandom(3 * MiB + 17)],
        [b"row\n" * 300_000, os.urandom(MiB), b"tail without newline"],
    ],
    ids=["no-chunks", "empty-chunk", "one-row", "with-empty-between", "random-3mib", "mixed"],
)
def test_round_trip(chunks: list[bytes], store: LocalStorage, ring: Keyring) -> None:
    plain = b"".join(chunks)
    r = encode(chunks, store, ring)
    assert r.plain_bytes == len(plain)
    assert r.plain_sha256 == hashlib.sha256(plain).hexdigest()
    assert r.newlines == plain.count(b"\n")
    stored = store.get_bytes(r.key)
    assert (r.stored_bytes, r.stored_sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    if len(plain) >= 16:
        assert plain[:16] not in stored
    assert decode(store, r.stored_object(), ring) == plain


def test_reading_in_small_pieces(store: LocalStorage, ring: Keyring) -> None:
    plain = os.urandom(200_000) + b"x" * 500_000
    r = encode([plain], store, ring)
    pieces = list(decode_from_storage(store, r.stored_object(), ring, backup_id=BACKUP, read_size=4096))
    assert max(len(p) for p in pieces) <= 4096
    assert b"".join(pieces) == plain


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("plain_sha256", "0" * 64, "plaintext checksum"),
        ("plain_bytes", 1, "plaintext size"),
        ("stored_sha256", "f" * 64, "stored checksum"),
        ("stored_bytes", 3, "stored size"),
    ],
)
def test_wrong_expectation_is_an_integrity_error(
    store: LocalStorage, ring: Keyring, field: str, value: object, what: str
) -> None:
    r = encode([b"1\tAda\n" * 1000], store, ring)
    obj = dataclasses.replace(r.stored_object(), **{field: value})
    with pytest.raises(IntegrityError, match=f"{r.key}.*wrong {what}") as e:
        decode(store, obj, ring)
    assert "restore from another target" in e.value.fix


def test_object_of_another_backup_or_key_is_refused(store: LocalStorage, ring: Keyring) -> None:
    r = encode([b"secret rows\n" * 100], store, ring)
    with pytest.raises(CryptoError, match="belongs elsewhere"):
        decode(store, r.stored_object(), ring, backup_id="another-backup")
    store.put_bytes("data/swapped.wsb", store.get_bytes(r.key))
    with pytest.raises(CryptoError, match="belongs elsewhere"):
        decode(store, dataclasses.replace(r.stored_object(), key="data/swapped.wsb"), ring)
    with pytest.raises(CryptoError):
        decode(store, r.stored_object(), Keyring(os.urandom(32)))


def test_data_that_is_not_zstd_is_an_integrity_error(store: LocalStorage, ring: Keyring) -> None:
    key = "data/not-zstd.wsb"
    enc = ObjectEncryptor(ring.new_data_key(BACKUP), key)
    blob = enc.update(b"this was never compressed" * 10) + enc.finalize()
    store.put_bytes(key, blob)
    obj = StoredObject(key, len(blob), hashlib.sha256(blob).hexdigest(), 250, "0" * 64)
    with pytest.raises(IntegrityError, match="does not decompress"):
        decode(store, obj, ring)


def test_failed_source_publishes_nothing(store: LocalStorage, ring: Keyring) -> None:
    def broken() -> Iterator[bytes]:
        yield b"first rows\n" * 1000
        raise RuntimeError("COPY connection lost")

    with pytest.raises(RuntimeError, match="COPY connection lost"):
        encode_to_storage(broken(), store, "data/broken.wsb", ring.new_data_key(BACKUP))
    assert not store.exists("data/broken.wsb")
    assert list(store.list("")) == []


# --- memory stays bounded whatever the size ------------------------------------------------------------

TOTAL = 300 * MiB


class _Stream:
    """300 MiB of COPY-like text with a random MiB every 10th, generated chunk by chunk and hashed on the way."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.newlines = 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(TOTAL // MiB):
            if i % 10 == 9:
                chunk = os.urandom(MiB)
            else:
                line = f"{i:08d}\tguest {i}\tparty of four\tvegetarian\n".encode()
                chunk = (line * (MiB // len(line) + 1))[:MiB]
            self.sha.update(chunk)
            self.newlines += chunk.count(b"\n")
            yield chunk


def _peak(fn: object) -> tuple[object, int]:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()  # type: ignore[operator]
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_300mib_encode_and_decode_in_bounded_memory(store: LocalStorage, ring: Keyring) -> None:
    stream = _Stream()
    data_key = ring.new_data_key(BACKUP)
    r, peak_enc = _peak(lambda: encode_to_storage(stream, store, "data/big.wsb", data_key))
    assert isinstance(r, EncodeResult)
    assert peak_enc < 64 * MiB, f"encode peak {peak_enc / MiB:.0f} MiB"
    assert r.plain_bytes == TOTAL and r.plain_sha256 == stream.sha.hexdigest() and r.newlines == stream.newlines
    assert r.stored_bytes < TOTAL // 4  # compressible part shrank, random part did not grow much

    def drain() -> tuple[str, int]:
        h, n = hashlib.sha256(), 0
        for piece in decode_from_storage(store, r.stored_object(), ring, backup_id=BACKUP):
            h.update(piece)
            n += len(piece)
        return h.hexdigest(), n

    (sha, n), peak_dec = _peak(drain)  # type: ignore[misc]
    assert peak_dec < 64 * MiB, f"decode peak {peak_dec / MiB:.0f} MiB"
    assert (sha, n) == (stream.sha.hexdigest(), TOTAL)


def test_bundle_pieces_read_alone_and_checked_in_one_pass(store: LocalStorage, ring: Keyring) -> None:
    """A bundle is one stored object; each piece decodes alone by a ranged read, is bound to its place (a piece
    moved elsewhere fails to decrypt), and one pass checks every piece and the whole."""
    texts = [b"wedding one\n" * 50, b"two\n", os.urandom(70_000)]
    with BundleWriter(store, "w/batch.wsb", ring.new_data_key(BACKUP)) as bw:
        pieces = [bw.add(iter([t[:10], t[10:]])) for t in texts]
    bundle = bw.bundle
    assert bundle is not None and store.size("w/batch.wsb") == bundle.stored_bytes
    assert [off for off, _ in pieces] == [
        0,
        pieces[0][1].stored_bytes,
        pieces[0][1].stored_bytes + pieces[1][1].stored_bytes,
    ]
    objs = [(off, r.stored_object()) for off, r in pieces]
    for (off, obj), text in zip(objs, texts, strict=True):
        assert b"".join(decode_from_storage(store, obj, ring, backup_id=BACKUP, offset=off)) == text
    check_bundle(store, bundle, objs, ring, backup_id=BACKUP)

    # the second piece's bytes moved to the front of the bundle: sealed for their old place, they fail
    off, obj = objs[1]
    store.put_bytes("w/batch.wsb", b"".join(store.read_range("w/batch.wsb", off, obj.stored_bytes)))
    with pytest.raises(CryptoError):
        b"".join(decode_from_storage(store, obj, ring, backup_id=BACKUP, offset=0))
    with BundleWriter(store, "w/batch.wsb", ring.new_data_key(BACKUP)) as bw:  # (the test's bundle again)
        pieces = [bw.add(iter([t])) for t in texts]
    bundle, objs = bw.bundle, [(off, r.stored_object()) for off, r in pieces]
    assert bundle is not None
    with pytest.raises(IntegrityError, match="do not tile"):
        check_bundle(store, bundle, [objs[0], objs[2]], ring, backup_id=BACKUP)
    data = bytearray(store.get_bytes("w/batch.wsb"))
    data[objs[1][0] + 40] ^= 1  # damage inside the second piece: named by its place
    store.put_bytes("w/batch.wsb", bytes(data))
    with pytest.raises((CryptoError, IntegrityError), match=f"at byte {objs[1][0]}"):
        check_bundle(store, bundle, objs, ring, backup_id=BACKUP)
