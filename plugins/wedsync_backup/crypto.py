"""Envelope encryption: AES-256-GCM in authenticated chunks.

A fresh random data key per backup is wrapped by the active master key (the key id is kept beside it); each
object derives its own subkey from the data key with HKDF and a random salt, so chunk nonces are a plain
counter. Every chunk is authenticated together with the object's header (binding it to its backup and object
name), and the last chunk carries a "final" flag, so tampering, truncation, reordering and swapping objects
are all detected on read.

Object layout::

    b"WSB1" | u32 header length | header JSON | { u32 frame length | AES-GCM(ciphertext+tag) }*

The header holds no secret: the wrapped data key, key id, salt, object name, chunk size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from wedsync_backup.errors import ConfigError, CryptoError

MAGIC = b"WSB1"
ALGORITHM = "AES-256-GCM"
DEFAULT_CHUNK = 1 << 20
TAG_BYTES = 16
_LEN = struct.Struct(">I")
MAX_HEADER = 64 * 1024


def key_id_for(key: bytes) -> str:
    """A stable, non-secret fingerprint of a master key (what manifests record)."""
    return "mk-" + hmac.new(key, b"wedsync-backup master key id", hashlib.sha256).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def parse_master_key(text: str, *, where: str) -> bytes:
    """A master key is base64 of exactly 32 random bytes; anything else is refused with the fix."""
    try:
        key = _unb64((text or "").strip())
    except (binascii.Error, ValueError) as e:
        raise ConfigError(
            f"The master key in {where} is not valid base64",
            str(e),
            'generate one with: python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"',
        ) from e
    if len(key) != 32:
        raise ConfigError(
            f"The master key in {where} is {len(key)} bytes",
            "AES-256 needs exactly 32 bytes (base64 of 32 random bytes)",
            'generate one with: python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"',
        )
    return key


class Keyring:
    """Master keys by id: the active one encrypts new backups, every one of them decrypts."""

    def __init__(self, active: bytes, previous: Iterable[bytes] = (), *, source: str = "backup_encryption"):
        self.source = source
        self.active_id = key_id_for(active)
        self._keys = {key_id_for(k): k for k in (*previous, active)}
        # Data keys of backups whose manifest was authenticated (see ``remember``), by backup id.
        self._data_keys: dict[str, DataKey] = {}

    def only_active(self) -> Keyring:
        """A keyring with the active master key alone: proves a backup no longer needs a retired key."""
        return Keyring(self._keys[self.active_id], source=f"{self.source} (active key only)")

    def remember(self, data_key: DataKey) -> None:
        """Keep a backup's data key, unwrapped from its authenticated manifest.

        After a key rotation, the manifest holds the data key wrapped under the new master key while the
        objects' headers still name the retired one; a header whose master key is gone is then opened with
        this data key (every chunk is still authenticated with it, so a wrong key cannot go unnoticed).
        """
        self._data_keys[data_key.backup_id] = data_key

    @classmethod
    def from_secrets(cls, active: str, previous: Iterable[str] = (), *, source: str) -> Keyring:
        return cls(
            parse_master_key(active, where=f"connection {source} (password)"),
            [parse_master_key(p, where=f"connection {source} (extra previous_keys)") for p in previous],
            source=source,
        )

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def _key(self, key_id: str, backup_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise CryptoError(
                f"Backup {backup_id} was encrypted with master key {key_id}, which connection "
                f"{self.source} does not hold",
                f"it holds {', '.join(self.key_ids)}",
                f"add that key to the extra 'previous_keys' list of connection {self.source}",
            ) from None

    def new_data_key(self, backup_id: str) -> DataKey:
        key = os.urandom(32)
        return DataKey(key=key, key_id=self.active_id, backup_id=backup_id, wrapped=self._wrap(key, backup_id))

    def rewrap(self, data_key: DataKey) -> dict[str, str]:
        """``data_key`` wrapped under the active master key (key rotation: the data itself is unchanged)."""
        return self._wrap(data_key.key, data_key.backup_id)

    def _wrap(self, key: bytes, backup_id: str) -> dict[str, str]:
        nonce = os.urandom(12)
        wrapped = AESGCM(self._keys[self.active_id]).encrypt(nonce, key, _wrap_aad(backup_id, self.active_id))
        return {"key_id": self.active_id, "nonce": _b64(nonce), "ciphertext": _b64(wrapped)}

    def unwrap(self, wrapped: dict[str, str], backup_id: str) -> DataKey:
        if not isinstance(wrapped, dict):
            raise CryptoError(
                f"The wrapped data key of backup {backup_id} is malformed", fix="restore from another target"
            )
        key_id = wrapped.get("key_id", "?")
        if key_id not in self._keys and backup_id in self._data_keys:
            return self._data_keys[backup_id]
        master = self._key(key_id, backup_id)
        try:
            key = AESGCM(master).decrypt(
                _unb64(wrapped["nonce"]), _unb64(wrapped["ciphertext"]), _wrap_aad(backup_id, key_id)
            )
        except (InvalidTag, KeyError, binascii.Error, ValueError) as e:
            raise CryptoError(
                f"Master key {key_id} could not unwrap the data key of backup {backup_id}",
                "the wrapped key was altered or belongs to another backup",
                "restore from another target, or from another backup",
            ) from e
        return DataKey(key=key, key_id=key_id, backup_id=backup_id, wrapped=dict(wrapped))


def _wrap_aad(backup_id: str, key_id: str) -> bytes:
    return f"wedsync-backup data key|{backup_id}|{key_id}".encode()


@dataclass(frozen=True)
class DataKey:
    key: bytes
    key_id: str
    backup_id: str
    wrapped: dict[str, str]

    def subkey(self, purpose: str, salt: bytes = b"") -> bytes:
        return HKDF(hashes.SHA256(), 32, salt or None, f"wsb1|{purpose}".encode()).derive(self.key)

    def manifest_section(self) -> dict[str, object]:
        """The manifest's ``encryption`` section: algorithm, key id and the wrapped key (no secret)."""
        return {"algorithm": ALGORITHM, "key_id": self.key_id, "wrapped_key": self.wrapped, "chunk_size": DEFAULT_CHUNK}

    def mac(self, data: bytes) -> str:
        """MAC for small metadata (the manifest) under this backup's data key."""
        return hmac.new(self.subkey("manifest"), data, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never print key material
        return f"DataKey(key_id={self.key_id!r}, backup_id={self.backup_id!r})"


def _nonce(counter: int, final: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


class ObjectEncryptor:
    """Encrypts one object as a stream: feed plaintext with ``update``, end with ``finalize``."""

    def __init__(self, data_key: DataKey, object_name: str, chunk_size: int = DEFAULT_CHUNK) -> None:
        salt = os.urandom(16)
        header = json.dumps(
            {
                "v": 1,
                "alg": ALGORITHM,
                "backup_id": data_key.backup_id,
                "object": object_name,
                "chunk": chunk_size,
                "salt": _b64(salt),
                "wrapped_key": data_key.wrapped,
            },
            sort_keys=True,
        ).encode()
        self._header = MAGIC + _LEN.pack(len(header)) + header
        self._aad = hashlib.sha256(self._header).digest()
        self._aead = AESGCM(data_key.subkey(f"object|{object_name}", salt))
        self._chunk = chunk_size
        self._buf = bytearray()
        self._counter = 0
        self._started = False

    def _frame(self, data: bytes, final: bool) -> bytes:
        ct = self._aead.encrypt(_nonce(self._counter, final), data, self._aad)
        self._counter += 1
        return _LEN.pack(len(ct)) + ct

    def _prefix(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._header

    def update(self, data: bytes) -> bytes:
        self._buf += data
        out = [self._prefix()]
        # keep at least one byte back so the last frame is always the one marked final
        while len(self._buf) > self._chunk:
            out.append(self._frame(bytes(self._buf[: self._chunk]), final=False))
            del self._buf[: self._chunk]
        return b"".join(out)

    def finalize(self) -> bytes:
        out = self._prefix() + self._frame(bytes(self._buf), final=True)
        self._buf.clear()
        return out


class ObjectDecryptor:
    """Decrypts one object as a stream, authenticating every chunk; raises CryptoError on any fault."""

    def __init__(self, keyring: Keyring, *, backup_id: str, object_name: str, where: str = "") -> None:
        self._keyring = keyring
        self._backup_id = backup_id
        self._object = object_name
        self._where = f" on {where}" if where else ""
        self._buf = bytearray()
        self._aead: AESGCM | None = None
        self._aad = b""
        self._chunk = 0
        self._counter = 0
        self._final_seen = False

    def _fail(self, what: str, why: str) -> CryptoError:
        return CryptoError(
            f"{what} (object {self._object} of backup {self._backup_id}{self._where})",
            why,
            "the copy is damaged: restore from another target or another backup, and re-run the backup",
        )

    def _read_header(self) -> bool:
        if len(self._buf) < 8:
            return False
        if bytes(self._buf[:4]) != MAGIC:
            raise self._fail("Not a WedSync encrypted object", "its first bytes are not the WSB1 signature")
        (hlen,) = _LEN.unpack(self._buf[4:8])
        if hlen > MAX_HEADER:
            raise self._fail("Corrupt object header", f"header length {hlen} is implausible")
        if len(self._buf) < 8 + hlen:
            return False
        raw = bytes(self._buf[: 8 + hlen])
        try:
            header = json.loads(raw[8:])
        except ValueError as e:
            raise self._fail("Corrupt object header", "it is not valid JSON") from e
        if not isinstance(header, dict):
            raise self._fail("Corrupt object header", "it is not a JSON object")
        if header.get("backup_id") != self._backup_id or header.get("object") != self._object:
            raise self._fail(
                "Object belongs elsewhere",
                f"its header names object {header.get('object')} of backup {header.get('backup_id')}",
            )
        try:
            wrapped, salt, chunk = header["wrapped_key"], _unb64(header["salt"]), int(header["chunk"])
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise self._fail("Corrupt object header", f"field {e} is missing or malformed") from e
        try:
            data_key = self._keyring.unwrap(wrapped, self._backup_id)
        except CryptoError as e:
            raise self._fail("Cannot unwrap the data key in the object header", e.render()) from e
        self._aead = AESGCM(data_key.subkey(f"object|{self._object}", salt))
        self._aad = hashlib.sha256(raw).digest()
        self._chunk = chunk
        del self._buf[: 8 + hlen]
        return True

    def update(self, data: bytes) -> bytes:
        self._buf += data
        if self._aead is None and not self._read_header():
            return b""
        out = []
        while len(self._buf) >= 4:
            (n,) = _LEN.unpack(self._buf[:4])
            if n < TAG_BYTES or n > self._chunk + TAG_BYTES:
                raise self._fail(f"Corrupt chunk {self._counter}", f"frame length {n} is implausible")
            if len(self._buf) < 4 + n:
                break
            if self._final_seen:
                raise self._fail("Data after the final chunk", "the object was appended to")
            ct = bytes(self._buf[4 : 4 + n])
            del self._buf[: 4 + n]
            out.append(self._open(ct))
        return b"".join(out)

    def _open(self, ct: bytes) -> bytes:
        assert self._aead is not None
        for final in (False, True):
            try:
                pt = self._aead.decrypt(_nonce(self._counter, final), ct, self._aad)
            except InvalidTag:
                continue
            self._counter += 1
            self._final_seen = final
            return pt
        raise self._fail(
            f"Chunk {self._counter} failed authentication",
            "it was altered, reordered, or comes from another object",
        )

    def finalize(self) -> None:
        if self._aead is None:
            raise self._fail("Object is truncated", "it ends inside its header")
        if self._buf:
            raise self._fail("Object is truncated", f"{len(self._buf)} bytes of an incomplete chunk at the end")
        if not self._final_seen:
            raise self._fail("Object is truncated", f"it ends after chunk {self._counter - 1} without the final one")


def decrypt_stream(
    stored: Iterable[bytes], keyring: Keyring, *, backup_id: str, object_name: str, where: str = ""
) -> Iterator[bytes]:
    """Plaintext of an encrypted object, chunk by chunk; raises at the first fault and at a missing end."""
    dec = ObjectDecryptor(keyring, backup_id=backup_id, object_name=object_name, where=where)
    for piece in stored:
        out = dec.update(piece)
        if out:
            yield out
    dec.finalize()
