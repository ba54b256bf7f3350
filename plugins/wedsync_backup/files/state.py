"""A backup's file state: one JSON line per file (path -> content hash, size), stored encrypted in the backup.

A full capture lists every file; an incremental's lists only what changed since the capture before it
(``deleted`` lines for files gone). The state at any capture is its chain of states replayed from the last
full one, so a point-in-time restore knows exactly which objects existed then.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from wedsync_backup.crypto import DataKey, Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.files.content import content_key
from wedsync_backup.manifest import FilesSection, Manifest, StoredObject
from wedsync_backup.pipeline import decode_from_storage, encode_to_storage
from wedsync_backup.storage.base import Storage

STATUS_OK = "ok"
STATUS_KEPT = "kept_previous"  # the source object is missing or corrupt: the last good version is kept
STATUS_MISSING = "missing"  # missing or corrupt, and no good version was ever captured


def state_key(backup_id: str) -> str:
    return f"backups/{backup_id}/files/state.jsonl"


@dataclass
class FileEntry:
    """One file at a capture. ``sha256``/``size``: the content kept (None: nothing good was ever captured);
    ``stored_*``: its encrypted object in the content store; ``etag``: the source object's, to notice change;
    ``data_key``: the content object's own data key, so it opens even after its master key is retired."""

    path: str
    sha256: str | None = None
    size: int | None = None
    wedding_id: str | None = None
    etag: str | None = None
    stored_bytes: int | None = None
    stored_sha256: str | None = None
    status: str = STATUS_OK
    deleted: bool = False
    data_key: str | None = None  # the content object's data key (base64); this state is encrypted

    @property
    def restorable(self) -> bool:
        return not self.deleted and self.sha256 is not None

    def content(self) -> StoredObject:
        """The content store object that holds this file's bytes."""
        assert self.sha256 is not None and self.size is not None
        return StoredObject(
            key=content_key(self.sha256),
            stored_bytes=int(self.stored_bytes or 0),
            stored_sha256=str(self.stored_sha256),
            plain_bytes=self.size,
            plain_sha256=self.sha256,
        )

    def line(self) -> bytes:
        d = {k: v for k, v in asdict(self).items() if v not in (None, False)}
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def write_state(storage: Storage, backup_id: str, entries: Iterable[FileEntry], data_key: DataKey) -> StoredObject:
    """Stream the entries into the backup's encrypted state object."""
    return encode_to_storage((e.line() for e in entries), storage, state_key(backup_id), data_key).stored_object()


def read_state(storage: Storage, manifest: Manifest, keyring: Keyring) -> Iterator[FileEntry]:
    """The entries of one backup's state object, streamed and authenticated."""
    assert manifest.files is not None
    buf = b""
    for piece in decode_from_storage(storage, manifest.files.state, keyring, backup_id=manifest.backup_id):
        buf += piece
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line:
                yield _entry(line, manifest.backup_id)
    if buf:
        yield _entry(buf, manifest.backup_id)


def _entry(line: bytes, backup_id: str) -> FileEntry:
    try:
        return FileEntry(**json.loads(line))
    except (ValueError, TypeError) as e:
        raise IntegrityError(f"The file state of backup {backup_id} has a malformed line", str(e)) from e


def capture_chain(manifests: list[Manifest], backup_id: str) -> list[Manifest]:
    """The captures whose states make up ``backup_id``'s: the last full state first, then each delta."""
    by_id = {m.backup_id: m for m in manifests if m.files is not None}
    chain: list[Manifest] = []
    at: str | None = backup_id
    while at is not None:
        m = by_id.get(at)
        if m is None:
            raise IntegrityError(
                f"The file state of backup {backup_id} needs the capture of backup {at}, which is not there",
                "it was pruned or never completed",
                "restore the files from a full backup (or a later one)",
            )
        chain.append(m)
        at = m.files.delta_of if m.files else None
    return chain[::-1]


def state_at(storage: Storage, manifests: list[Manifest], backup_id: str, keyring: Keyring) -> dict[str, FileEntry]:
    """Path -> entry of the files as they were at ``backup_id``'s capture (deltas replayed)."""
    state: dict[str, FileEntry] = {}
    for m in capture_chain(manifests, backup_id):
        for e in read_state(storage, m, keyring):
            if e.deleted:
                state.pop(e.path, None)
            else:
                state[e.path] = e
    return state


def files_captures(manifests: list[Manifest], wedding_ids: list[str] | None = None) -> list[Manifest]:
    """Committed backups that captured the whole file state, oldest capture first; with ``wedding_ids``, also
    the wedding backups' captures that hold every one of those weddings' files (scoped ones)."""
    found = (m for m in manifests if m.files is not None and m.files.covers(wedding_ids))
    return sorted(found, key=lambda m: _section(m).captured_at)


def _section(m: Manifest) -> FilesSection:
    assert m.files is not None
    return m.files
