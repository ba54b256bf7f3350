"""A batch of weddings exported from the run's snapshot, one encrypted bundle per batch, and read back.

Each table of the slice (and each parent table) is read ONCE per batch: ``COPY`` of its member rows for all
the batch's weddings, each row tagged with its wedding, split into per-wedding buffers. Then every wedding's
buffers go through the one pipeline (zstd, AES-256-GCM under the backup's data key) as its own encrypted
piece of the batch's bundle (``pipeline.BundleWriter``): one stored object per batch, so a run over 500
weddings writes, copies and verifies 5 objects, not 500, and one wedding is still read back alone with a
ranged read of its piece. Memory is bounded by one batch's slices (batch_size).

A wedding piece's plaintext (a pre_restore snapshot writes the same as an object of its own), line by line
(rows are COPY text, one line each):

    WSWEDDING 1 {"backup_id": ..., "wedding_id": ...}
    T {"schema": ..., "name": ..., "role": root|direct|path|parent, "columns": [...], "rows": N}
    <N COPY lines>
    ... (one T section per table, slice tables in load order, then parents in load order)
    E
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import ClientCursor, sql

from wedsync_backup.crypto import DataKey, Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.manifest import Manifest, StoredObject, WeddingEntry, backup_prefix
from wedsync_backup.pg import PgTarget
from wedsync_backup.pipeline import BundleWriter, decode_from_storage
from wedsync_backup.policy import DEFAULT_ZSTD_LEVEL
from wedsync_backup.repository import read_manifest
from wedsync_backup.restore import verify_manifest_mac
from wedsync_backup.storage.base import Storage
from wedsync_backup.weddings.slice import WEDDING_ID, SliceTable, WeddingSlice
from wedsync_backup.weddings.snapshot import import_snapshot

log = logging.getLogger(__name__)
MAGIC = b"WSWEDDING 1 "
_COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def wedding_object_key(backup_id: str, wedding_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", wedding_id)[:60]
    digest = hashlib.sha256(wedding_id.encode()).hexdigest()[:12]
    return f"{backup_prefix(backup_id)}weddings/{safe}-{digest}.wsb"


def bundle_key(backup_id: str, batch_no: int) -> str:
    return f"{backup_prefix(backup_id)}weddings/batch-{batch_no:05d}.wsb"


def table_label(t: SliceTable) -> str:
    return f"{t.schema}.{t.name}"


def _unescape(field: bytes) -> str:
    text = field.decode()
    return re.sub(r"\\(.)", lambda m: _COPY_ESCAPES.get(m.group(1), m.group(1)), text) if "\\" in text else text


def _stored_columns(t: SliceTable) -> list[str]:
    """What a restore can load: every column but generated ones (the database computes those)."""
    return [c for c in t.columns if c not in t.generated_columns]


def _copy_rows(conn: Any, t: SliceTable, wedding_ids: list[str]) -> Iterator[tuple[str, bytes]]:
    """(wedding id, COPY line) for each of the table's rows of the given weddings."""
    cols = _stored_columns(t)
    query = sql.SQL("COPY (SELECT s.{}, {} FROM ({}) s) TO STDOUT").format(
        sql.Identifier(WEDDING_ID),
        sql.SQL(", ").join(sql.Identifier("s", c) for c in cols),
        t.member_rows_sql(with_wedding_id=True),
    )
    # COPY takes no server-side parameters: the ids are bound as literals, client side
    bound = ClientCursor(conn).mogrify(query, {"wedding_ids": wedding_ids})
    rest = b""
    with conn.cursor() as cur, cur.copy(bound) as copy:
        for data in copy:
            buf = rest + bytes(data)
            lines = buf.split(b"\n")
            rest = lines.pop()
            for line in lines:
                wid, _, row = line.partition(b"\t")
                yield _unescape(wid), row + b"\n"
    if rest:
        raise IntegrityError(f"COPY of {table_label(t)} ended in the middle of a row", fix="re-run the backup")


@dataclass(frozen=True)
class BatchWedding:
    wedding_id: str
    wedding_date: str | None
    phase: str
    retention_policy: str | None = None


def export_batch(
    source: PgTarget,
    storage: Storage,
    data_key: DataKey,
    *,
    backup_id: str,
    batch_no: int,
    snapshot: str,
    wedding_slice: WeddingSlice,
    weddings: list[BatchWedding],
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
) -> tuple[list[WeddingEntry], StoredObject | None]:
    """Export the batch's weddings in the run's snapshot into one bundle on ``storage``: their entries and
    the bundle (None when no wedding of the batch is left in the snapshot)."""
    ids = [w.wedding_id for w in weddings]
    tables = [(t, "root" if t is wedding_slice.root else t.membership) for t in wedding_slice.tables]
    tables += [(p, "parent") for p in wedding_slice.parents]
    # wedding id -> table index -> its COPY lines
    rows: dict[str, list[list[bytes]]] = {w: [[] for _ in tables] for w in ids}
    with source.connect(autocommit=False) as conn:
        import_snapshot(conn, snapshot, backup_id)
        for i, (t, _) in enumerate(tables):
            for wid, line in _copy_rows(conn, t, ids):
                rows[wid][i].append(line)
        conn.rollback()
    present = []
    for w in weddings:
        if rows[w.wedding_id][0]:
            present.append(w)
            continue
        rows.pop(w.wedding_id)  # deleted between choosing and the snapshot: nothing to back up, the others go on
        log.warning(
            "!!! Wedding %s has no row in %s in the run's snapshot (deleted just before it): not in this "
            "backup; restore it from an earlier wedding backup if the delete was a mistake",
            w.wedding_id,
            wedding_slice.root.display,
        )
    if not present:
        return [], None
    out = []
    with BundleWriter(storage, bundle_key(backup_id, batch_no), data_key, zstd_level=zstd_level) as bundle:
        for w in present:
            mine = rows.pop(w.wedding_id)
            counts = {table_label(t): len(mine[i]) for i, (t, role) in enumerate(tables) if role != "parent"}
            parents = {table_label(t): len(mine[i]) for i, (t, role) in enumerate(tables) if role == "parent"}
            offset, result = bundle.add(_object_chunks(backup_id, w.wedding_id, tables, mine))
            out.append(
                WeddingEntry(
                    wedding_id=w.wedding_id,
                    wedding_date=w.wedding_date,
                    phase=w.phase,
                    object=result.stored_object(),
                    row_counts=counts,
                    parent_row_counts=parents,
                    retention_policy=w.retention_policy,
                    offset=offset,
                )
            )
    return out, bundle.bundle


def _object_chunks(
    backup_id: str, wedding_id: str, tables: list[tuple[SliceTable, str]], lines: list[list[bytes]]
) -> Iterator[bytes]:
    yield MAGIC + json.dumps({"backup_id": backup_id, "wedding_id": wedding_id}).encode() + b"\n"
    for (t, role), mine in zip(tables, lines, strict=True):
        head = {"schema": t.schema, "name": t.name, "role": role, "columns": _stored_columns(t), "rows": len(mine)}
        yield b"T " + json.dumps(head).encode() + b"\n"
        yield b"".join(mine)
        mine.clear()
    yield b"E\n"


# --- reading one wedding back ----------------------------------------------------------------------------------
@dataclass
class SliceSection:
    """One table of a wedding object. ``lines`` yields its rows as COPY text lines (newline included), ready
    for ``COPY schema.name (columns) FROM STDIN``; read it before asking for the next section."""

    schema: str
    name: str
    role: str  # root | direct | path | parent
    columns: list[str]
    rows: int
    lines: Iterator[bytes]


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for p in parts:
            yield p + b"\n"
    if rest:
        yield rest


def read_wedding_slice(
    storage: Storage,
    keyring: Keyring,
    backup_id: str,
    wedding_id: str,
    *,
    manifest: Manifest | None = None,
) -> Iterator[SliceSection]:
    """Stream one wedding's rows out of a committed wedding backup, table by table, without the others.

    The manifest (read from ``storage`` unless given) is authenticated; the object is decrypted and checked
    chunk by chunk, and its sizes, checksums and per-table row counts are checked against the manifest when
    the last section is read: treat what was read as good only once this generator is exhausted.
    """
    manifest = manifest or read_manifest(storage, backup_id)
    verify_manifest_mac(manifest, keyring)
    entry = manifest.weddings.entry(wedding_id) if manifest.weddings else None
    if entry is None:
        raise IntegrityError(
            f"Backup {backup_id} holds no wedding {wedding_id!r}",
            "it is not a wedding backup, or that wedding was not due in its run",
            "pick a wedding backup that lists it (see the wedding_backups table)",
        )
    return read_wedding_object(storage, keyring, backup_id, entry)


def read_wedding_object(
    storage: Storage, keyring: Keyring, backup_id: str, entry: WeddingEntry
) -> Iterator[SliceSection]:
    """One wedding's object (as its authenticated manifest describes it, ``entry``), section by section."""
    wedding_id = entry.wedding_id
    lines = _lines(decode_from_storage(storage, entry.object, keyring, backup_id=backup_id, offset=entry.offset))
    head = next(lines, b"")
    if not head.startswith(MAGIC) or json.loads(head[len(MAGIC) :])["wedding_id"] != wedding_id:
        raise IntegrityError(f"Object {entry.object.key} is not the object of wedding {wedding_id}")
    expected = {**entry.row_counts, **entry.parent_row_counts}
    for line in lines:
        if line == b"E\n":
            for _ in lines:  # the end of the stream: sizes and checksums are checked there
                pass
            return
        meta = json.loads(line[2:])
        n = int(meta["rows"])
        label = f"{meta['schema']}.{meta['name']}"
        if expected.get(label) != n:
            raise IntegrityError(
                f"Wedding {wedding_id}'s {label} has {n} rows in its object, the manifest says {expected.get(label)}",
                fix="restore from another target",
            )
        section_lines = (next(lines) for _ in range(n))
        yield SliceSection(meta["schema"], meta["name"], meta["role"], list(meta["columns"]), n, section_lines)
        for _ in section_lines:  # whatever the consumer left unread
            pass
    raise IntegrityError(f"Object {entry.object.key} of wedding {wedding_id} is truncated", fix="use another target")
