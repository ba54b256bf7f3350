"""backup_operations and what hangs off a backup: its replicas, table statistics and recovery point.

A backup is opened (in progress), then completed in one transaction with every verified copy, or failed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from wedsync_backup.catalog.audit import write_audit
from wedsync_backup.catalog.connection import CatalogBase, Conn, aware, parse_time
from wedsync_backup.catalog.wedding_backups import record_wedding_backups
from wedsync_backup.errors import ConfigError, IntegrityError
from wedsync_backup.manifest import BACKUP_TYPES, Manifest, TableEntry

# Target name -> role (see policy.TARGET_ROLES) of the classic three-target set-up; callers pass the policy's.
DEFAULT_ROLES: Mapping[str, str] = {"primary": "primary", "secondary": "secondary", "offsite": "offsite"}
LOCATION_ROLES = ("primary", "secondary", "offsite")  # backup_operations.<role>_location
REPLICA_KEYS = (
    "target_name",
    "kind",
    "medium",
    "site",
    "location",
    "stored_bytes",
    "object_count",
    "manifest_sha256",
    "verified",
    "verified_at",
)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_replicas(
    backup_id: str, manifest_sha256: str, replicas: Sequence[dict[str, Any]], required: Sequence[str]
) -> None:
    """A backup counts only when every copy is verified and the whole required set is there."""
    problems: list[str] = []
    names = [r.get("target_name") for r in replicas]
    for r in replicas:
        name = r.get("target_name", "?")
        missing = [k for k in REPLICA_KEYS if k not in r]
        if missing:
            problems.append(f"replica '{name}' lacks {', '.join(missing)}")
            continue
        if r["verified"] is not True:
            problems.append(f"replica '{name}' is not verified" + (f" ({r['error']})" if r.get("error") else ""))
        elif r["verified_at"] is None:
            problems.append(f"replica '{name}' is verified but has no verified_at")
        if r["manifest_sha256"] != manifest_sha256:
            problems.append(
                f"replica '{name}' holds manifest {str(r['manifest_sha256'])[:12]}…, not {manifest_sha256[:12]}…"
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"target(s) {', '.join(map(str, dupes))} listed twice")
    absent = [t for t in required if t not in names]
    if absent:
        problems.append(f"no copy on {', '.join(absent)}")
    if not replicas:
        problems.append("no replicas at all")
    if problems:
        raise IntegrityError(
            f"Backup {backup_id} cannot be marked completed",
            "; ".join(problems),
            "re-run the copy/verify step for those targets; the backup stays unusable until every copy is verified",
        )


def _stored_checksum(table: TableEntry) -> str:
    """One checksum of a table's stored parts, like the manifest's content checksum of the plaintext."""
    h = hashlib.sha256()
    for part in table.parts:
        h.update(part.stored_sha256.encode() + b"\n")
    return h.hexdigest()


def _replica_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in (*REPLICA_KEYS, "error")}


def locations_by_role(replicas: Sequence[dict[str, Any]], roles: Mapping[str, str]) -> dict[str, str | None]:
    """backup_operations' location columns: each role's first copy, in the order the replicas come."""
    out: dict[str, str | None] = dict.fromkeys(LOCATION_ROLES)
    for r in replicas:
        role = roles.get(r["target_name"])
        if role in out and out[role] is None:
            out[role] = r.get("location")
    return out


def point_type(manifest: Manifest) -> str:
    if manifest.backup_type in ("wedding", "pre_restore"):
        return manifest.backup_type
    return "incremental" if manifest.parent_backup_id else "full"


class Backups(CatalogBase):
    def start_backup(
        self,
        *,
        backup_id: str,
        backup_type: str,
        created_by: str,
        rule_321: dict[str, Any],
        warnings: list[str],
        retention_until: datetime | None,
        dag_id: str | None = None,
        run_id: str | None = None,
        reason: str | None = None,
        parent_backup_id: str | None = None,
        components: Sequence[Any] = ("database",),
    ) -> bool:
        """Record the backup as in progress. False if it is already completed (a duplicate trigger)."""
        if backup_type not in BACKUP_TYPES:
            raise ConfigError(f"Unknown backup type '{backup_type}'", fix=f"use one of {', '.join(BACKUP_TYPES)}")
        aware(retention_until, "retention_until")
        with self.connect() as conn:
            row = conn.execute(
                "SELECT status, backup_type FROM backup_operations WHERE backup_id = %s FOR UPDATE",
                (backup_id,),
            ).fetchone()
            if row and row["status"] == "completed":
                return False
            if row and row["backup_type"] != backup_type:
                raise ConfigError(
                    f"Backup id {backup_id} is already recorded as a {row['backup_type']} backup",
                    f"this run asks for a {backup_type} backup with the same id",
                    "use a new backup id",
                )
            conn.execute(
                """
                INSERT INTO backup_operations AS b (backup_id, backup_type, status, started_at, created_by,
                    reason, parent_backup_id, dag_id, run_id, rule_321, warnings, retention_until,
                    components_backed_up)
                VALUES (%(id)s, %(type)s, 'in_progress', now(), %(by)s, %(reason)s, %(parent)s, %(dag)s,
                    %(run)s, %(rule)s, %(warnings)s, %(retention)s, %(components)s)
                ON CONFLICT (backup_id) DO UPDATE SET
                    status = 'in_progress', started_at = now(), completed_at = NULL, error = NULL,
                    created_by = EXCLUDED.created_by, reason = EXCLUDED.reason,
                    parent_backup_id = EXCLUDED.parent_backup_id, dag_id = EXCLUDED.dag_id,
                    run_id = EXCLUDED.run_id, rule_321 = EXCLUDED.rule_321, warnings = EXCLUDED.warnings,
                    retention_until = EXCLUDED.retention_until,
                    components_backed_up = EXCLUDED.components_backed_up
                """,
                {
                    "id": backup_id,
                    "type": backup_type,
                    "by": created_by,
                    "reason": reason,
                    "parent": parent_backup_id,
                    "dag": dag_id,
                    "run": run_id,
                    "rule": Jsonb(rule_321),
                    "warnings": Jsonb(list(warnings)),
                    "retention": retention_until,
                    "components": Jsonb(list(components)),
                },
            )
            if not row:
                write_audit(
                    conn,
                    "backup_started",
                    actor=created_by,
                    backup_id=backup_id,
                    details={
                        "backup_type": backup_type,
                        "dag_id": dag_id,
                        "run_id": run_id,
                        "reason": reason,
                    },
                    key=f"backup_started:{backup_id}",
                )
        return True

    def fail_backup(self, backup_id: str, error: str) -> bool:
        """Mark the backup failed; a completed backup is never touched. True if the status changed."""
        with self.connect() as conn:
            row = conn.execute(
                "UPDATE backup_operations SET status = 'failed', error = %s, completed_at = NULL"
                " WHERE backup_id = %s AND status NOT IN ('completed', 'failed') RETURNING created_by",
                (error, backup_id),
            ).fetchone()
            if row is None:
                # Already failed (a retry of the failure callback) or completed: keep the first error.
                return False
            write_audit(
                conn,
                "backup_failed",
                actor=row["created_by"],
                backup_id=backup_id,
                details={"error": error},
            )
        return True

    def complete_backup(
        self,
        manifest: Manifest,
        manifest_sha256: str,
        replicas: list[dict[str, Any]],
        retention_until: datetime | None,
        *,
        roles: Mapping[str, str] = DEFAULT_ROLES,
        actor: str | None = None,
    ) -> bool:
        """Record a backup whose every copy is verified, in one transaction. False if already recorded.

        ``roles`` maps every target of the policy to its role: each must hold a copy. Raises IntegrityError
        (and writes nothing) unless every replica is verified, holds this manifest and every target is there.
        """
        aware(retention_until, "retention_until")
        with self.connect() as conn:
            return self._complete(conn, manifest, manifest_sha256, replicas, retention_until, roles, actor)

    def _complete(
        self,
        conn: Conn,
        manifest: Manifest,
        manifest_sha: str,
        replicas: Sequence[dict[str, Any]],
        retention_until: datetime | None,
        roles: Mapping[str, str],
        actor: str | None,
    ) -> bool:
        bid = manifest.backup_id
        if not SHA256_RE.match(manifest_sha):
            raise IntegrityError(
                f"Backup {bid}: '{manifest_sha}' is not a sha256 hex digest",
                fix="pass the manifest's sha256 hex",
            )
        _check_replicas(bid, manifest_sha, replicas, list(roles))
        cp = manifest.consistent_point
        snapshot_time = parse_time(cp.get("time") or manifest.created_at, f"Backup {bid} consistent time")
        row = conn.execute(
            "SELECT status, backup_type, checksum, created_by FROM backup_operations WHERE backup_id = %s FOR UPDATE",
            (bid,),
        ).fetchone()
        if row and row["backup_type"] != manifest.backup_type:
            raise IntegrityError(
                f"Backup {bid} is recorded as {row['backup_type']} but its manifest says {manifest.backup_type}",
                fix="check which run wrote this backup id; use a new id for a new backup",
            )
        already = row is not None and row["status"] == "completed"
        if row is not None and already and row["checksum"] != manifest_sha:
            raise IntegrityError(
                f"Backup {bid} is already completed with manifest {row['checksum'][:12]}…, "
                f"now offered {manifest_sha[:12]}…",
                "two different manifests claim the same backup id",
                "investigate the repository; never overwrite a completed backup",
            )
        chain = self._chain(conn, manifest)
        by_name = {r["target_name"]: r for r in replicas}
        prov = manifest.provenance_info
        known = prov.created_by if prov.created_by != "unknown" else None
        created_by = (row["created_by"] if row else None) or known or actor or "unknown"
        where = locations_by_role(replicas, roles)
        params = {
            "id": bid,
            "type": manifest.backup_type,
            "created_at": parse_time(manifest.created_at, f"Backup {bid} created_at"),
            "by": created_by,
            "plain": manifest.plain_bytes,
            "stored": manifest.stored_bytes,
            "tables": [t.qualified for t in manifest.tables],
            "primary": where["primary"],
            "secondary": where["secondary"],
            "offsite": where["offsite"],
            "checksum": manifest_sha,
            "retention": retention_until,
            "parent": manifest.parent_backup_id,
            "key_id": (manifest.encryption or {}).get("key_id"),
            "format": manifest.format_version,
            "lsn": cp.get("lsn"),
            "snap": snapshot_time,
            "rows": manifest.total_rows,
            "dag": prov.dag_id,
            "run": prov.run_id,
            "reason": prov.reason,
            "rule": Jsonb(prov.rule_321) if prov.rule_321 is not None else None,
            "warnings": Jsonb(list(prov.warnings)),
            "ddl": None,
            "ddl_details": None,
            "components": Jsonb(manifest.components),  # what the manifest holds, not what begin expected
        }
        if manifest.backup_type == "incremental" and (
            "schema_changes" in manifest.extra or "chain_end" in manifest.extra
        ):
            from wedsync_backup.schema_changes import chain_end_warning, outcome  # (it imports the catalog)

            kind, details = outcome(manifest)  # what the capture recorded; a rebuilt catalog says the same
            params["ddl"], params["ddl_details"] = kind, Jsonb(details)
            if kind == "chain_ended":
                params["warnings"] = Jsonb([*prov.warnings, chain_end_warning(details["chain_end"])])
        conn.execute(
            """
            INSERT INTO backup_operations AS b (backup_id, backup_type, status, started_at, completed_at,
                created_by, size_bytes, compressed_size_bytes, tables_included, primary_location,
                secondary_location, offsite_location, checksum, integrity_verified, retention_until,
                parent_backup_id, key_id, format_version, consistent_lsn, snapshot_time, total_rows,
                dag_id, run_id, reason, rule_321, warnings, schema_changes, schema_change_details,
                components_backed_up)
            VALUES (%(id)s, %(type)s, 'completed', %(created_at)s, now(), %(by)s, %(plain)s, %(stored)s,
                %(tables)s, %(primary)s, %(secondary)s, %(offsite)s, %(checksum)s, true, %(retention)s,
                %(parent)s, %(key_id)s, %(format)s, %(lsn)s, %(snap)s, %(rows)s, %(dag)s, %(run)s,
                %(reason)s, %(rule)s, %(warnings)s, %(ddl)s, %(ddl_details)s, %(components)s)
            ON CONFLICT (backup_id) DO UPDATE SET
                status = 'completed', integrity_verified = true, error = NULL, pruned_at = NULL,
                completed_at = COALESCE(b.completed_at, now()),
                size_bytes = EXCLUDED.size_bytes, compressed_size_bytes = EXCLUDED.compressed_size_bytes,
                tables_included = EXCLUDED.tables_included, primary_location = EXCLUDED.primary_location,
                secondary_location = EXCLUDED.secondary_location,
                offsite_location = EXCLUDED.offsite_location, checksum = EXCLUDED.checksum,
                retention_until = COALESCE(EXCLUDED.retention_until, b.retention_until),
                parent_backup_id = EXCLUDED.parent_backup_id, key_id = EXCLUDED.key_id,
                format_version = EXCLUDED.format_version, consistent_lsn = EXCLUDED.consistent_lsn,
                snapshot_time = EXCLUDED.snapshot_time, total_rows = EXCLUDED.total_rows,
                dag_id = COALESCE(b.dag_id, EXCLUDED.dag_id), run_id = COALESCE(b.run_id, EXCLUDED.run_id),
                reason = COALESCE(b.reason, EXCLUDED.reason),
                rule_321 = COALESCE(b.rule_321, EXCLUDED.rule_321),
                warnings = CASE WHEN b.warnings = '[]'::jsonb THEN EXCLUDED.warnings ELSE b.warnings END,
                schema_changes = COALESCE(b.schema_changes, EXCLUDED.schema_changes),
                schema_change_details = COALESCE(b.schema_change_details, EXCLUDED.schema_change_details),
                components_backed_up = EXCLUDED.components_backed_up
            """,
            params,
        )
        with conn.cursor() as cur:
            cur.executemany(
                """
                INSERT INTO backup_replicas (backup_id, target_name, kind, medium, site, location,
                    stored_bytes, object_count, manifest_sha256, verified, verified_at, error)
                VALUES (%(backup_id)s, %(target_name)s, %(kind)s, %(medium)s, %(site)s, %(location)s,
                    %(stored_bytes)s, %(object_count)s, %(manifest_sha256)s, %(verified)s, %(verified_at)s,
                    NULL)
                ON CONFLICT (backup_id, target_name) DO UPDATE SET
                    kind = EXCLUDED.kind, medium = EXCLUDED.medium, site = EXCLUDED.site,
                    location = EXCLUDED.location, stored_bytes = EXCLUDED.stored_bytes,
                    object_count = EXCLUDED.object_count, manifest_sha256 = EXCLUDED.manifest_sha256,
                    verified = EXCLUDED.verified, verified_at = EXCLUDED.verified_at, error = NULL,
                    updated_at = now()
                """,
                [
                    {
                        **{k: r[k] for k in REPLICA_KEYS},
                        "backup_id": bid,
                        "verified_at": aware(r["verified_at"], f"replica {r['target_name']} verified_at"),
                    }
                    for r in replicas
                ],
            )
            cur.executemany(
                """
                INSERT INTO backup_table_stats (backup_id, schema_name, table_name, priority, row_count,
                    plain_bytes, stored_bytes, plain_sha256, stored_sha256, part_count)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (backup_id, schema_name, table_name) DO UPDATE SET
                    priority = EXCLUDED.priority, row_count = EXCLUDED.row_count,
                    plain_bytes = EXCLUDED.plain_bytes, stored_bytes = EXCLUDED.stored_bytes,
                    plain_sha256 = EXCLUDED.plain_sha256, stored_sha256 = EXCLUDED.stored_sha256,
                    part_count = EXCLUDED.part_count
                """,
                [
                    (
                        bid,
                        t.schema,
                        t.name,
                        t.priority,
                        t.row_count,
                        t.plain_bytes,
                        t.stored_bytes,
                        t.content_sha256,
                        _stored_checksum(t),
                        len(t.parts),
                    )
                    for t in manifest.tables
                ],
            )
        conn.execute(
            """
            INSERT INTO recovery_points (backup_id, recovery_timestamp, wal_position, transaction_id, chain,
                point_type)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (backup_id) DO NOTHING
            """,
            (
                bid,
                snapshot_time,
                cp.get("lsn"),
                cp.get("txid_snapshot"),
                chain,
                point_type(manifest),
            ),
        )
        record_wedding_backups(conn, manifest)  # a wedding backup's per-wedding points, same transaction
        write_audit(
            conn,
            "backup_completed",
            actor=created_by,
            backup_id=bid,
            details={
                "manifest_sha256": manifest_sha,
                "targets": sorted(by_name),
                "size_bytes": manifest.plain_bytes,
                "compressed_size_bytes": manifest.stored_bytes,
                "total_rows": manifest.total_rows,
            },
            key=f"backup_completed:{bid}",
        )
        return not already

    @staticmethod
    def _chain(conn: Conn, manifest: Manifest) -> list[str]:
        """Backups to apply for this one, full first: the parent's chain plus this backup."""
        if not manifest.parent_backup_id:
            return [manifest.backup_id]
        row = conn.execute(
            "SELECT r.chain FROM recovery_points r JOIN backup_operations b USING (backup_id)"
            " WHERE r.backup_id = %s AND b.status = 'completed' AND b.pruned_at IS NULL",
            (manifest.parent_backup_id,),
        ).fetchone()
        if row is None:
            raise IntegrityError(
                f"Incremental backup {manifest.backup_id} depends on {manifest.parent_backup_id}",
                "that parent is not a completed, unpruned backup in the catalog, so this one could not be restored",
                "take a new full backup",
            )
        return [*row["chain"], manifest.backup_id]

    def get_backup(self, backup_id: str) -> dict[str, Any] | None:
        """The backup's row with its ``replicas`` and ``recovery_point`` (None if unknown)."""
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM backup_operations WHERE backup_id = %s", (backup_id,)).fetchone()
            if row is None:
                return None
            row["replicas"] = [
                _replica_dict(r)
                for r in conn.execute(
                    "SELECT * FROM backup_replicas WHERE backup_id = %s ORDER BY target_name", (backup_id,)
                )
            ]
            row["recovery_point"] = conn.execute(
                "SELECT * FROM recovery_points WHERE backup_id = %s", (backup_id,)
            ).fetchone()
            return row

    def list_completed(self, backup_type: str | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Restorable backups (completed, not pruned), newest consistent point first."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM backup_operations WHERE status = 'completed' AND pruned_at IS NULL"
                " AND (%(type)s::text IS NULL OR backup_type = %(type)s)"
                " ORDER BY snapshot_time DESC NULLS LAST, completed_at DESC, backup_id DESC"
                " LIMIT %(limit)s",
                {"type": backup_type, "limit": limit},
            ).fetchall()

    def list_in_progress(self) -> list[dict[str, Any]]:
        """Backups being written now (pending or in progress): their objects must not be pruned."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM backup_operations WHERE status IN ('pending', 'in_progress') ORDER BY started_at"
            ).fetchall()

    def delete_backup_rows(self, backup_id: str, *, actor: str = "retention") -> bool:
        """After its objects were deleted from storage: drop its replicas and recovery point, keep the row.

        The backup_operations row stays (history, sizes, audit) with ``pruned_at`` set, and is no longer
        listed as restorable. True if this call pruned it.
        """
        with self.connect() as conn:
            row = conn.execute(
                "UPDATE backup_operations SET pruned_at = now() WHERE backup_id = %s AND pruned_at IS NULL"
                " RETURNING backup_id",
                (backup_id,),
            ).fetchone()
            conn.execute("DELETE FROM backup_replicas WHERE backup_id = %s", (backup_id,))
            conn.execute("DELETE FROM recovery_points WHERE backup_id = %s", (backup_id,))
            if row:
                write_audit(conn, "backup_pruned", actor=actor, backup_id=backup_id, key=f"pruned:{backup_id}")
        return row is not None
