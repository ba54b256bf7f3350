"""Large objects (``pg_largeobject``): their contents in a full backup, and back in a restore.

pg_dump's pre-data section already creates each large object (same OID, owner, ACL, comment), empty; their
contents are not table data, so the export streams them itself, in the backup's snapshot, as one encrypted
object ``largeobjects.wsb``: for each large object a header line ``{"oid": N, "size": S}`` and then its S bytes.
Reading and writing go in 1 MiB slices, so memory stays bounded whatever their size.

Logical decoding does not carry large-object changes: an incremental chain does not follow them. A
point-in-time restore brings them back as the full backup had them (preflight warns when the source has any).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import psycopg

from wedsync_backup.crypto import DataKey, Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.manifest import Manifest, StoredObject, backup_prefix
from wedsync_backup.pipeline import decode_from_storage, encode_to_storage
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
SLICE = 1 << 20
INV_READ, INV_WRITE = 0x40000, 0x20000


def large_objects_key(backup_id: str) -> str:
    return f"{backup_prefix(backup_id)}largeobjects.wsb"


def _stream(conn: psycopg.Connection, oids: list[int], counter: list[int]) -> Iterator[bytes]:
    for oid in oids:
        size = _length(conn, oid)
        yield (json.dumps({"oid": oid, "size": size}) + "\n").encode()
        offset = 0
        while offset < size:
            piece = conn.execute("SELECT lo_get(%s, %s, %s)", (oid, offset, min(SLICE, size - offset))).fetchone()[0]
            yield bytes(piece)
            offset += len(piece)
        counter[0] += 1


def _length(conn: psycopg.Connection, oid: int) -> int:
    """The length of a large object, without reading it (seek to its end)."""
    fd = conn.execute("SELECT lo_open(%s, %s)", (oid, INV_READ)).fetchone()[0]
    end = conn.execute("SELECT lo_lseek64(%s, 0, 2)", (fd,)).fetchone()[0]
    conn.execute("SELECT lo_close(%s)", (fd,))
    return int(end)


def export_large_objects(
    conn: psycopg.Connection, storage: Storage, backup_id: str, data_key: DataKey, zstd_level: int
) -> dict[str, object] | None:
    """Stream every large object readable in ``conn``'s snapshot; the manifest section, or None when none."""
    oids = [r[0] for r in conn.execute("SELECT oid::bigint FROM pg_largeobject_metadata ORDER BY oid").fetchall()]
    if not oids:
        return None
    counter = [0]
    result = encode_to_storage(
        _stream(conn, oids, counter), storage, large_objects_key(backup_id), data_key, zstd_level=zstd_level
    )
    log.info("Exported %d large objects (%d bytes)", counter[0], result.plain_bytes)
    return {"object": result.stored_object().__dict__, "count": counter[0]}


def large_objects_object(manifest: Manifest) -> StoredObject | None:
    section = manifest.extra.get("large_objects")
    return StoredObject(**section["object"]) if section else None


def restore_large_objects(manifest: Manifest, storage: Storage, keyring: Keyring, conn: psycopg.Connection) -> int:
    """Write the backup's large objects into the target (created empty by pre-data, or created here)."""
    obj = large_objects_object(manifest)
    if obj is None:
        return 0
    buf = b""
    restored = 0
    oid, left, offset = None, 0, 0
    with conn.transaction():
        for chunk in decode_from_storage(storage, obj, keyring, backup_id=manifest.backup_id):
            buf += chunk
            while buf:
                if oid is None:
                    line, sep, rest = buf.partition(b"\n")
                    if not sep:
                        break
                    head = json.loads(line)
                    oid, left, offset, buf = head["oid"], head["size"], 0, rest
                    conn.execute(
                        "SELECT lo_create(%s) WHERE NOT EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE oid = %s)",
                        (oid, oid),
                    )
                    conn.execute("SELECT lo_truncate(lo_open(%s, %s), 0)", (oid, INV_WRITE))
                take = buf[:left]
                if take:
                    conn.execute("SELECT lo_put(%s, %s, %s)", (oid, offset, take))
                    offset += len(take)
                    left -= len(take)
                    buf = buf[len(take) :]
                if left == 0:
                    restored += 1
                    oid = None
                elif not buf:
                    break
        if oid is not None or buf:
            raise IntegrityError(
                f"The large objects of backup {manifest.backup_id} end in the middle of one",
                "the stream is truncated although it authenticated: the backup was written incompletely",
                "restore from another target",
            )
    expected = manifest.extra["large_objects"]["count"]
    if restored != expected:
        raise IntegrityError(
            f"Restored {restored} large objects, the backup holds {expected}",
            "the restore did not load what the manifest promises",
            "restore from another target",
        )
    return restored
