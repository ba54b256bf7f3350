"""The safety snapshot: before a partial restore commits, the live rows it replaces become a ``pre_restore``
backup, taken and verified like any backup (the backup command's phases: begin, replicate to every replica,
verify every copy, commit). Restoring that backup through the same scope undoes the restore.

Its export reads the target (the live database, not necessarily the policy's source) in one snapshot:
wedding-only, one encrypted object per wedding in the wedding backup's object format (its tables in scope as
sections); selective, one part per table. The manifest's ``restore_scope`` section describes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from wedsync_backup.commands import backup
from wedsync_backup.commands.resources import Resources, RunRef
from wedsync_backup.crypto import DataKey, Keyring
from wedsync_backup.export import _copy_chunks, _safe, exported_snapshot
from wedsync_backup.manifest import (
    Manifest,
    Provenance,
    RestoreScope,
    TableEntry,
    WeddingEntry,
    backup_prefix,
    content_checksum,
)
from wedsync_backup.parallel import each_object
from wedsync_backup.partial.shape import LiveTable
from wedsync_backup.partial.stage import bind
from wedsync_backup.pg import PgTarget
from wedsync_backup.pipeline import encode_to_storage
from wedsync_backup.policy import DEFAULT_ZSTD_LEVEL
from wedsync_backup.repository import begin_attempt, seal_pending
from wedsync_backup.storage.base import Storage
from wedsync_backup.weddings.export import _copy_rows, _object_chunks, table_label, wedding_object_key
from wedsync_backup.weddings.slice import SliceTable

log = logging.getLogger(__name__)
BACKUP_TYPE = "pre_restore"
TIER = "full"  # kept as long as a full backup


@dataclass(frozen=True)
class SnapshotTable:
    """One table of the snapshot: its rows in scope, one query (and part) per wedding or one for the table."""

    live: LiveTable
    columns: tuple[str, ...]
    queries: tuple[tuple[sql.Composable, Mapping[str, Any] | None], ...]


def export_rows(
    target: PgTarget,
    storage: Storage,
    keyring: Keyring,
    *,
    backup_id: str,
    tables: Sequence[SnapshotTable],
    scope: RestoreScope,
    provenance: Provenance,
    wedding_tables: Sequence[SliceTable] = (),
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
) -> Manifest:
    """Export the rows ``tables`` select from ``target`` in one snapshot; leaves the manifest pending.
    Idempotent like every export: a retry clears an earlier attempt, a committed backup is returned."""
    done = begin_attempt(storage, backup_id)
    if done is not None:
        return done
    data_key = keyring.new_data_key(backup_id)
    entries = []
    with exported_snapshot(target) as (conn, point):
        info = conn.execute("SELECT current_database(), current_setting('server_version')").fetchone()
        if wedding_tables:
            scope.weddings = _wedding_objects(conn, storage, data_key, backup_id, wedding_tables, scope, zstd_level)
        for i, t in enumerate(tables):
            parts, rows = [], 0
            for j, (query, params) in enumerate(t.queries):
                select = sql.SQL("COPY (SELECT {} FROM ({}) m) TO STDOUT").format(
                    sql.SQL(", ").join(map(sql.Identifier, t.columns)), query
                )
                key = f"{backup_prefix(backup_id)}data/{i:05d}-{_safe(t.live.display)}-{j:05d}.wsb"
                result = encode_to_storage(
                    _copy_chunks(conn, bind(conn, select, params)), storage, key, data_key, zstd_level=zstd_level
                )
                parts.append(result.stored_object())
                rows += result.newlines
            entries.append(
                TableEntry(
                    schema=t.live.schema,
                    name=t.live.name,
                    priority="standard",
                    columns=list(t.columns),
                    row_count=rows,
                    parts=parts,
                    content_sha256=content_checksum(parts),
                    relkind=t.live.kind,
                )
            )
    manifest = Manifest(
        backup_id=backup_id,
        backup_type=BACKUP_TYPE,
        created_at=point.time,
        source={"database": info[0], "server_version": info[1], "label": target.label},
        consistent_point=point.as_dict(),
        encryption=data_key.manifest_section(),
        compression={"algorithm": "zstd", "level": zstd_level},
        schema={},
        tables=entries,
        provenance=provenance,
        restore_scope=scope,
    )
    seal_pending(storage, manifest, data_key)
    return manifest


def _wedding_objects(
    conn: psycopg.Connection,
    storage: Storage,
    data_key: DataKey,
    backup_id: str,
    tables: Sequence[SliceTable],
    scope: RestoreScope,
    zstd_level: int,
) -> list[WeddingEntry]:
    """Wedding-only: each wedding's rows of ``tables`` as ONE object, in the wedding backup's object format
    (read back with ``read_wedding_object``); a wedding with no rows at all gets its (empty) object too."""
    lines: dict[str, list[list[bytes]]] = {w: [[] for _ in tables] for w in scope.wedding_ids}
    for i, t in enumerate(tables):
        for wedding, line in _copy_rows(conn, t, scope.wedding_ids):
            lines[wedding][i].append(line)
    entries = []
    for wedding in scope.wedding_ids:
        mine = lines.pop(wedding)
        counts = {table_label(t): len(rows) for t, rows in zip(tables, mine, strict=True)}
        chunks = _object_chunks(backup_id, wedding, [(t, t.membership) for t in tables], mine)
        stored = encode_to_storage(
            chunks, storage, wedding_object_key(backup_id, wedding), data_key, zstd_level=zstd_level
        )
        entries.append(WeddingEntry(wedding, None, "", stored.stored_object(), counts))
    return entries


def take_safety_snapshot(
    res: Resources,
    run: RunRef,
    target: PgTarget,
    tables: Sequence[SnapshotTable],
    scope: RestoreScope,
    reason: str,
    wedding_tables: Sequence[SliceTable] = (),
) -> str:
    """The pre_restore backup of ``tables``' rows in scope, verified on every target and committed; its id."""
    # the targets are checked one by one right before their copy: the export to the primary need not wait for
    # the other targets' clients (a task builds them meanwhile, see wedsync_airflow.resources)
    begun = backup.begin(res, run, backup_type=BACKUP_TYPE, tier=TIER, reason=reason, targets=False)
    backup_id = begun.backup_id
    try:
        manifest = export_rows(
            target,
            res.primary(),
            res.keyring(),
            backup_id=backup_id,
            tables=tables,
            scope=scope,
            provenance=backup.provenance_of(res, backup_id, run, TIER),
            wedding_tables=wedding_tables,
            zstd_level=res.policy.zstd_level,
        )
        sha = manifest.sha256()
        # the tables in scope stay locked until the commit: every target side by side, a replica copied then
        # verified, the primary verified (no copy waits for another target's)
        names = list(res.policy.target_names)

        def copy_and_verify(name: str) -> dict[str, Any]:
            if name != names[0]:  # the primary holds the export already
                backup.check_target(res.storage(name))
                backup.replicate(res, backup_id, sha, name)
            return backup.verify(res, backup_id, sha, name)

        checks = list(each_object(copy_and_verify, names, len(names)))
        backup.commit(res, backup_id, sha, checks, tier=TIER)
    except Exception:
        backup.mark_failed(res, backup_id)
        raise
    log.info(
        "Safety snapshot %s: %d rows of %d tables, verified on every target",
        backup_id,
        manifest.total_rows,
        len(tables),
    )
    return backup_id
