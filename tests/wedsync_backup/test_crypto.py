"""Chunked AES-256-GCM: round trip, and every kind of damage gives a clear error."""

from __future__ import annotations

import base64
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wedsync_backup.crypto import MAGIC, Keyring, ObjectEncryptor, decrypt_stream, key_id_for
from wedsync_backup.errors import ConfigError, CryptoError

CHUNK = 64


def _keyring() -> Keyring:
    return Keyring(os.urandom(32))


def _encrypt(ring: Keyring, data: bytes, *, backup_id: str = "b1", name: str = "data/0001.wsb") -> bytes:
    enc = ObjectEncryptor(ring.new_data_key(backup_id), name, chunk_size=CHUNK)
    out = b""
    for i in range(0, len(data), 17):
        out += enc.update(data[i : i + 17])
    return out + enc.finalize()


def _decrypt(ring: Keyring, blob: bytes, *, backup_id: str = "b1", name: str = "data/0001.wsb") -> bytes:
    pieces = [blob[i : i + 29] for i in range(0, len(blob), 29)]
    return b"".join(decrypt_stream(pieces, ring, backup_id=backup_id, object_name=name))


def _frames(blob: bytes) -> tuple[bytes, list[bytes]]:
    (hlen,) = struct.unpack(">I", blob[4:8])
    header, rest, frames = blob[: 8 + hlen], blob[8 + hlen :], []
    while rest:
        (n,) = struct.unpack(">I", rest[:4])
        frames.append(rest[: 4 + n])
        rest = rest[4 + n :]
    return header, frames


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=CHUNK * 6))
def test_round_trip(data: bytes) -> None:
    ring = _keyring()
    blob = _encrypt(ring, data)
    assert blob.startswith(MAGIC)
    if len(data) >= 16:
        assert data not in blob
    assert _decrypt(ring, blob) == data


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=CHUNK * 4), st.data())
def test_any_flipped_bit_is_detected(data: bytes, draw: st.DataObject) -> None:
    ring = _keyring()
    blob = bytearray(_encrypt(ring, data))
    pos = draw.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= 1 << draw.draw(st.integers(0, 7))
    with pytest.raises(CryptoError):
        _decrypt(ring, bytes(blob))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=CHUNK * 4), st.data())
def test_any_truncation_is_detected(data: bytes, draw: st.DataObject) -> None:
    ring = _keyring()
    blob = _encrypt(ring, data)
    cut = draw.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CryptoError, match=r"truncated|Not a WedSync"):
        _decrypt(ring, blob[:cut])


def test_whole_chunk_truncation_names_the_missing_end() -> None:
    ring = _keyring()
    header, frames = _frames(_encrypt(ring, os.urandom(CHUNK * 3 + 5)))
    with pytest.raises(CryptoError, match="without the final one"):
        _decrypt(ring, header + b"".join(frames[:-1]))


def test_reordered_chunks_are_detected() -> None:
    ring = _keyring()
    header, frames = _frames(_encrypt(ring, os.urandom(CHUNK * 3 + 5)))
    assert len(frames) == 4
    swapped = [frames[1], frames[0], *frames[2:]]
    with pytest.raises(CryptoError, match="Chunk 0 failed authentication"):
        _decrypt(ring, header + b"".join(swapped))


def test_appended_data_is_detected() -> None:
    ring = _keyring()
    header, frames = _frames(_encrypt(ring, os.urandom(CHUNK * 2)))
    with pytest.raises(CryptoError, match=r"after the final chunk|authentication"):
        _decrypt(ring, header + b"".join(frames) + frames[0])


def test_object_swapped_between_names_is_detected() -> None:
    ring = _keyring()
    blob = _encrypt(ring, b"guest list", name="data/0001.wsb")
    with pytest.raises(CryptoError, match="belongs elsewhere"):
        _decrypt(ring, blob, name="data/0002.wsb")


def test_wrong_master_key_names_the_key_and_the_fix() -> None:
    blob = _encrypt(_keyring(), b"vendor contracts")
    other = _keyring()
    with pytest.raises(CryptoError, match=r"master key mk-[0-9a-f]{16}.*previous_keys"):
        _decrypt(other, blob)


def test_rotated_keys_still_decrypt_and_new_backups_use_the_active_key() -> None:
    old, new = os.urandom(32), os.urandom(32)
    blob = _encrypt(Keyring(old), b"timeline")
    rotated = Keyring(new, previous=[old])
    assert rotated.active_id == key_id_for(new)
    assert _decrypt(rotated, blob) == b"timeline"
    assert rotated.new_data_key("b2").key_id == key_id_for(new)


def test_tampered_wrapped_key_is_refused() -> None:
    ring = _keyring()
    dk = ring.new_data_key("b1")
    bad = dict(dk.wrapped, ciphertext=base64.b64encode(os.urandom(48)).decode())
    with pytest.raises(CryptoError, match="could not unwrap"):
        ring.unwrap(bad, "b1")
    with pytest.raises(CryptoError, match="could not unwrap"):
        ring.unwrap(dk.wrapped, "another-backup")


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"short").decode(), "is 5 bytes"),
        ("", "is 0 bytes"),
    ],
)
def test_bad_master_key_secret_says_how_to_make_one(secret: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        Keyring.from_secrets(secret, source="backup_encryption")
    assert "os.urandom(32)" in str(err.value)
    assert "backup_encryption" in str(err.value)


def test_data_key_never_printed() -> None:
    dk = _keyring().new_data_key("b1")
    assert dk.key.hex() not in repr(dk)
