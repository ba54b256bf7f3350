"""The tracking catalog: what was backed up, where every verified copy lives, what can be restored.

It lives in its own PostgreSQL database (``backup_catalog``), reached through a libpq conninfo string.
Every method opens a short-lived connection and is idempotent, so a retried task never duplicates a row.
The catalog is derived data: everything in it except tests, events and the audit log can be rebuilt
from the manifests in the repository (``rebuild_from_manifests``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from wedsync_backup.errors import ConfigError, IntegrityError, StorageError
from wedsync_backup.manifest import BACKUP_TYPES, Manifest, TableEntry

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "include" / "sql" / "tracking"
MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Serialises migrations of every process on one catalog ("WedSync" in ASCII).
MIGRATION_LOCK = 0x57656453796E63
REQUIRED_TARGETS = ("primary", "secondary", "offsite")
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
EVENT_STATUSES = ("planned", "in_progress", "completed", "failed", "refused")
TEST_TYPES = ("restore_drill", "verify")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# --- connections -----------------------------------------------------------------------------------------
@contextmanager
def _connect(dsn: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """One connection for one call: commits on success, rolls back on any error."""
    try:
        conn = psycopg.connect(dsn, row_factory=dict_row, application_name="wedsync_catalog")
    except psycopg.OperationalError as e:
        raise StorageError(
            "Cannot connect to the backup catalog database",
            str(e).strip(),
            "check the Airflow connection 'backup_catalog' and that its database server is up",
        ) from e
    with conn:
        yield conn


# --- migrations ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The numbered ``NNNN_name.sql`` files of ``directory``, in order."""
    directory = Path(directory or MIGRATIONS_DIR)
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = MIGRATION_RE.match(path.name)
        if not m:
            raise ConfigError(
                f"Catalog migration file {path} is not named NNNN_name.sql",
                fix="rename it, e.g. 0002_add_column.sql (lowercase letters, digits and _)",
            )
        data = path.read_bytes()
        version = int(m.group(1))
        if version in found:
            raise ConfigError(
                f"Catalog migrations {found[version].path.name} and {path.name} share version {version}",
                fix="give each migration its own number",
            )
        found[version] = Migration(version, path.stem, path, data.decode(), hashlib.sha256(data).hexdigest())
    if not found:
        raise ConfigError(f"No catalog migrations found in {directory}", fix="check the deployment")
    return [found[v] for v in sorted(found)]


def _check_unchanged(m: Migration, applied: dict[str, Any]) -> None:
    if applied["checksum"] != m.checksum:
        raise ConfigError(
            f"Catalog migration {m.path.name} was edited after being applied "
            f"(applied {applied['applied_at']:%Y-%m-%d %H:%M} UTC as '{applied['name']}')",
            "its checksum no longer matches the one recorded in schema_migrations",
            f"restore the original {m.path.name} and put the change in a new, higher-numbered migration",
        )


def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names newly applied.

    Every transaction takes the same advisory lock first, so tasks starting at once never double-apply.
    """
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    with _connect(dsn) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for m in migrations:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                row = conn.execute(
                    "SELECT name, checksum, applied_at AT TIME ZONE 'UTC' AS applied_at"
                    " FROM schema_migrations WHERE version = %s",
                    (m.version,),
                ).fetchone()
                if row:
                    _check_unchanged(m, row)
                    continue
                try:
                    conn.execute(m.sql.encode())
                except psycopg.Error as e:
                    raise ConfigError(
                        f"Catalog migration {m.path.name} failed and was rolled back",
                        str(e).strip(),
                        "fix the migration (it was never applied, so editing it is safe) and run again",
                    ) from e
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (m.version, m.name, m.checksum),
                )
                applied_now.append(m.name)
    return applied_now


# --- helpers ---------------------------------------------------------------------------------------------
def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ConfigError(
            f"{what} {value.isoformat()} has no time zone",
            "the catalog stores instants, and a naive time is ambiguous",
            "pass a timezone-aware datetime, e.g. datetime.now(UTC)",
        )
    return value


def _parse_time(value: Any, what: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return _aware(value, what)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError as e:
        raise IntegrityError(f"{what} '{value}' is not an ISO 8601 time", str(e), "check the manifest") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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


@dataclass
class RebuildResult:
    """What ``rebuild_from_manifests`` did: rows (re)created, and manifests it could not use, with why."""

    rebuilt: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


# --- the catalog -----------------------------------------------------------------------------------------
class Catalog:
    """Repository over the tracking tables; ``dsn`` is a libpq conninfo string or URL."""

    def __init__(self, dsn: str, *, migrations_dir: Path | None = None) -> None:
        self.dsn = dsn
        self.migrations_dir = migrations_dir

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with _connect(self.dsn) as conn:
            yield conn

    def migrate(self) -> list[str]:
        return migrate(self.dsn, self.migrations_dir)

    # --- backups -----------------------------------------------------------------------------------------
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
        components: Sequence[str] = ("database",),
    ) -> bool:
        """Record the backup as in progress. False if it is already completed (a duplicate trigger)."""
        if backup_type not in BACKUP_TYPES:
            raise ConfigError(f"Unknown backup type '{backup_type}'", fix=f"use one of {', '.join(BACKUP_TYPES)}")
        _aware(retention_until, "retention_until")
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
                self._audit(
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
            self._audit(
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
        required_targets: Sequence[str] = REQUIRED_TARGETS,
        actor: str | None = None,
    ) -> bool:
        """Record a backup whose every copy is verified, in one transaction. False if already recorded.

        Raises IntegrityError (and writes nothing) unless every replica is verified, holds this manifest
        and the ``required_targets`` are all present.
        """
        _aware(retention_until, "retention_until")
        with self.connect() as conn:
            return self._complete(conn, manifest, manifest_sha256, replicas, retention_until, required_targets, actor)

    def _complete(
        self,
        conn: psycopg.Connection[dict[str, Any]],
        manifest: Manifest,
        manifest_sha: str,
        replicas: Sequence[dict[str, Any]],
        retention_until: datetime | None,
        required_targets: Sequence[str],
        actor: str | None,
    ) -> bool:
        bid = manifest.backup_id
        if not SHA256_RE.match(manifest_sha):
            raise IntegrityError(
                f"Backup {bid}: '{manifest_sha}' is not a sha256 hex digest",
                fix="pass the manifest's sha256 hex",
            )
        _check_replicas(bid, manifest_sha, replicas, required_targets)
        cp = manifest.consistent_point
        snapshot_time = _parse_time(cp.get("time") or manifest.created_at, f"Backup {bid} consistent time")
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
        extra = manifest.extra or {}
        created_by = actor or (row["created_by"] if row else None) or extra.get("created_by") or "unknown"
        params = {
            "id": bid,
            "type": manifest.backup_type,
            "created_at": _parse_time(manifest.created_at, f"Backup {bid} created_at"),
            "by": created_by,
            "plain": manifest.plain_bytes,
            "stored": manifest.stored_bytes,
            "tables": [t.qualified for t in manifest.tables],
            "primary": by_name.get("primary", {}).get("location"),
            "secondary": by_name.get("secondary", {}).get("location"),
            "offsite": by_name.get("offsite", {}).get("location"),
            "checksum": manifest_sha,
            "retention": retention_until,
            "parent": manifest.parent_backup_id,
            "key_id": (manifest.encryption or {}).get("key_id"),
            "format": manifest.format_version,
            "lsn": cp.get("lsn"),
            "snap": snapshot_time,
            "rows": manifest.total_rows,
            "dag": extra.get("dag_id"),
            "run": extra.get("run_id"),
            "reason": extra.get("reason"),
            "rule": Jsonb(extra["rule_321"]) if "rule_321" in extra else None,
            "warnings": Jsonb(list(extra.get("warnings") or [])),
        }
        conn.execute(
            """
            INSERT INTO backup_operations AS b (backup_id, backup_type, status, started_at, completed_at,
                created_by, size_bytes, compressed_size_bytes, tables_included, primary_location,
                secondary_location, offsite_location, checksum, integrity_verified, retention_until,
                parent_backup_id, key_id, format_version, consistent_lsn, snapshot_time, total_rows,
                dag_id, run_id, reason, rule_321, warnings)
            VALUES (%(id)s, %(type)s, 'completed', %(created_at)s, now(), %(by)s, %(plain)s, %(stored)s,
                %(tables)s, %(primary)s, %(secondary)s, %(offsite)s, %(checksum)s, true, %(retention)s,
                %(parent)s, %(key_id)s, %(format)s, %(lsn)s, %(snap)s, %(rows)s, %(dag)s, %(run)s,
                %(reason)s, %(rule)s, %(warnings)s)
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
                rule_321 = COALESCE(b.rule_321, EXCLUDED.rule_321)
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
                        "verified_at": _aware(r["verified_at"], f"replica {r['target_name']} verified_at"),
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
                "incremental" if manifest.parent_backup_id else "full",
            ),
        )
        self._audit(
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
    def _chain(conn: psycopg.Connection[dict[str, Any]], manifest: Manifest) -> list[str]:
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

    def latest_completed(self, backup_type: str | None = "full") -> dict[str, Any] | None:
        """The newest restorable backup of that type (any type with None)."""
        found = self.list_completed(backup_type, limit=1)
        return found[0] if found else None

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

    def backups_past_retention(self, now: datetime, *, include_failed: bool = False) -> list[dict[str, Any]]:
        """Unpruned backups whose retention ended, oldest first.

        A backup that a live (completed, unpruned, still retained) incremental builds on is kept back:
        pruning it would make that incremental unrestorable.
        """
        _aware(now, "now")
        statuses = ["completed", "failed"] if include_failed else ["completed"]
        with self.connect() as conn:
            return conn.execute(
                """
                SELECT b.* FROM backup_operations b
                WHERE b.pruned_at IS NULL AND b.status = ANY(%(statuses)s)
                  AND b.retention_until IS NOT NULL AND b.retention_until <= %(now)s
                  AND NOT EXISTS (
                      SELECT 1 FROM recovery_points r JOIN backup_operations c USING (backup_id)
                      WHERE b.backup_id = ANY(r.chain) AND c.backup_id <> b.backup_id
                        AND c.status = 'completed' AND c.pruned_at IS NULL
                        AND (c.retention_until IS NULL OR c.retention_until > %(now)s))
                ORDER BY b.retention_until, b.backup_id
                """,
                {"statuses": statuses, "now": now},
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
                self._audit(conn, "backup_pruned", actor=actor, backup_id=backup_id, key=f"pruned:{backup_id}")
        return row is not None

    # --- audit -------------------------------------------------------------------------------------------
    def audit(
        self,
        action: str,
        *,
        actor: str,
        backup_id: str | None = None,
        details: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> bool:
        """Append an audit entry. With ``key``, a retry writes it only once (False when already there)."""
        with self.connect() as conn:
            return self._audit(conn, action, actor=actor, backup_id=backup_id, details=details, key=key)

    @staticmethod
    def _audit(
        conn: psycopg.Connection[dict[str, Any]],
        action: str,
        *,
        actor: str,
        backup_id: str | None = None,
        details: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> bool:
        cur = conn.execute(
            "INSERT INTO audit_log (actor, action, backup_id, details, event_key) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (event_key) DO NOTHING",
            (actor, action, backup_id, Jsonb(details or {}), key),
        )
        return cur.rowcount == 1

    def audit_entries(self, backup_id: str | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM audit_log WHERE %(id)s::text IS NULL OR backup_id = %(id)s ORDER BY id",
                {"id": backup_id},
            ).fetchall()

    # --- disaster recovery events ------------------------------------------------------------------------
    def start_recovery_event(
        self,
        *,
        event_type: str,
        dag_id: str | None,
        run_id: str | None,
        mode: str | None,
        scope: str | None,
        from_target: str | None,
        target_conn_id: str | None,
        dry_run: bool,
        reason: str | None,
        triggered_by: str | None,
        backup_id: str | None = None,
        plan: dict[str, Any] | None = None,
    ) -> int:
        """Open (or, for a retried task of the same DAG run, reopen) the event; returns its id.

        A dry run is recorded as 'planned', a real one as 'in_progress'. An event that already finished
        as completed is returned untouched, so a retry can see it and skip the work.
        """
        params = {
            "type": event_type,
            "status": "planned" if dry_run else "in_progress",
            "backup": backup_id,
            "mode": mode,
            "scope": scope,
            "from": from_target,
            "conn": target_conn_id,
            "dry": dry_run,
            "reason": reason,
            "by": triggered_by,
            "dag": dag_id,
            "run": run_id,
            "plan": Jsonb(plan) if plan is not None else None,
        }
        with self.connect() as conn:
            row = conn.execute(
                """
                INSERT INTO disaster_recovery_events AS e (event_type, status, backup_id, mode, scope,
                    from_target, target_conn_id, dry_run, reason, triggered_by, dag_id, run_id, plan)
                VALUES (%(type)s, %(status)s, %(backup)s, %(mode)s, %(scope)s, %(from)s, %(conn)s, %(dry)s,
                    %(reason)s, %(by)s, %(dag)s, %(run)s, %(plan)s)
                ON CONFLICT (dag_id, run_id) WHERE run_id IS NOT NULL DO UPDATE SET
                    event_type = EXCLUDED.event_type, status = EXCLUDED.status,
                    backup_id = EXCLUDED.backup_id, mode = EXCLUDED.mode, scope = EXCLUDED.scope,
                    from_target = EXCLUDED.from_target, target_conn_id = EXCLUDED.target_conn_id,
                    dry_run = EXCLUDED.dry_run, reason = EXCLUDED.reason,
                    triggered_by = EXCLUDED.triggered_by, plan = COALESCE(EXCLUDED.plan, e.plan),
                    completed_at = NULL, error = NULL, updated_at = now()
                WHERE e.status <> 'completed'
                RETURNING id
                """,
                params,
            ).fetchone()
            if row is None:  # already completed: leave it as it is
                row = conn.execute(
                    "SELECT id FROM disaster_recovery_events WHERE dag_id = %s AND run_id = %s",
                    (dag_id, run_id),
                ).fetchone()
            assert row is not None
            return int(row["id"])

    def finish_recovery_event(
        self,
        event_id: int,
        *,
        status: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        data_loss_minutes: float | None = None,
    ) -> None:
        if status not in EVENT_STATUSES:
            raise ConfigError(
                f"Unknown recovery event status '{status}'", fix=f"use one of {', '.join(EVENT_STATUSES)}"
            )
        with self.connect() as conn:
            cur = conn.execute(
                """
                UPDATE disaster_recovery_events SET status = %s, result = COALESCE(%s, result), error = %s,
                    data_loss_minutes = COALESCE(%s, data_loss_minutes),
                    completed_at = COALESCE(completed_at, now()), updated_at = now()
                WHERE id = %s
                """,
                (status, Jsonb(result) if result is not None else None, error, data_loss_minutes, event_id),
            )
            if cur.rowcount == 0:
                raise ConfigError(
                    f"Recovery event {event_id} does not exist in the catalog",
                    fix="pass the id returned by start_recovery_event",
                )

    def get_recovery_event(self, event_id: int) -> dict[str, Any] | None:
        with self.connect() as conn:
            return conn.execute("SELECT * FROM disaster_recovery_events WHERE id = %s", (event_id,)).fetchone()

    # --- tests of backups --------------------------------------------------------------------------------
    def record_backup_test(
        self,
        *,
        backup_id: str,
        test_type: str,
        status: str,
        target_name: str | None = None,
        duration_seconds: float | None = None,
        rows_checked: int | None = None,
        details: dict[str, Any] | None = None,
        error: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        tested_at: datetime | None = None,
    ) -> int:
        """Record a verify or restore drill; with ``run_id`` a retry updates its own row. Returns its id.

        A passed test also moves ``backup_operations.last_tested`` forward.
        """
        if test_type not in TEST_TYPES:
            raise ConfigError(f"Unknown backup test type '{test_type}'", fix=f"use one of {', '.join(TEST_TYPES)}")
        if status not in ("passed", "failed"):
            raise ConfigError(f"Unknown backup test status '{status}'", fix="use passed or failed")
        tested_at = _aware(tested_at, "tested_at") or datetime.now(UTC)
        with self.connect() as conn:
            if not conn.execute("SELECT 1 FROM backup_operations WHERE backup_id = %s", (backup_id,)).fetchone():
                raise ConfigError(
                    f"Backup {backup_id} is not in the catalog", fix="test a backup listed by the catalog"
                )
            row = conn.execute(
                """
                INSERT INTO backup_tests (backup_id, tested_at, test_type, target_name, status,
                    duration_seconds, rows_checked, details, error, dag_id, run_id)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (dag_id, run_id, backup_id, test_type, target_name) WHERE run_id IS NOT NULL
                DO UPDATE SET tested_at = EXCLUDED.tested_at, status = EXCLUDED.status,
                    duration_seconds = EXCLUDED.duration_seconds, rows_checked = EXCLUDED.rows_checked,
                    details = EXCLUDED.details, error = EXCLUDED.error
                RETURNING id
                """,
                (
                    backup_id,
                    tested_at,
                    test_type,
                    target_name or "",
                    status,
                    duration_seconds,
                    rows_checked,
                    Jsonb(details or {}),
                    error,
                    dag_id,
                    run_id,
                ),
            ).fetchone()
            if status == "passed":
                conn.execute(
                    "UPDATE backup_operations SET last_tested = GREATEST(last_tested, %s) WHERE backup_id = %s",
                    (tested_at, backup_id),
                )
            assert row is not None
            return int(row["id"])

    def backup_tests(self, backup_id: str) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM backup_tests WHERE backup_id = %s ORDER BY tested_at DESC, id DESC",
                (backup_id,),
            ).fetchall()

    # --- wedding settings --------------------------------------------------------------------------------
    def upsert_wedding_settings(
        self,
        wedding_id: str,
        *,
        wedding_date: date,
        organization_id: str | None = None,
        proximity_days: int = 7,
        frequency_minutes: int = 15,
        enabled: bool = True,
    ) -> None:
        with self.connect() as conn:
            conn.execute(
                """
                INSERT INTO wedding_backup_settings (wedding_id, organization_id, wedding_date,
                    proximity_days, frequency_minutes, enabled)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (wedding_id) DO UPDATE SET organization_id = EXCLUDED.organization_id,
                    wedding_date = EXCLUDED.wedding_date, proximity_days = EXCLUDED.proximity_days,
                    frequency_minutes = EXCLUDED.frequency_minutes, enabled = EXCLUDED.enabled,
                    updated_at = now()
                """,
                (wedding_id, organization_id, wedding_date, proximity_days, frequency_minutes, enabled),
            )

    def weddings_due(self, today: date) -> list[dict[str, Any]]:
        """Enabled weddings within their proximity window of ``today`` (date itself included)."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM wedding_backup_settings WHERE enabled AND wedding_date >= %(d)s"
                " AND wedding_date - %(d)s <= proximity_days ORDER BY wedding_date, wedding_id",
                {"d": today},
            ).fetchall()

    # --- rebuild -----------------------------------------------------------------------------------------
    def rebuild_from_manifests(
        self,
        manifests: Iterable[tuple[Manifest, str, list[dict[str, Any]]]],
        *,
        retention_days: dict[str, int] | None = None,
        required_targets: Sequence[str] = REQUIRED_TARGETS,
        actor: str = "catalog-rebuild",
    ) -> RebuildResult:
        """Re-create completed rows from (manifest, manifest sha256, verified replicas) found in storage.

        Parents are recorded before their incrementals. Retention is the backup's creation time plus
        ``retention_days[backup_type]`` (kept forever when no tier is given); an existing row keeps its own.
        A manifest that cannot be recorded (unverified copy, missing parent) is skipped with the reason.
        """
        result = RebuildResult()
        items = sorted(manifests, key=lambda item: (item[0].created_at, item[0].backup_id))
        for manifest, sha, replicas in items:
            days = (retention_days or {}).get(manifest.backup_type)
            retention = None
            if days is not None:
                created = _parse_time(manifest.created_at, f"Backup {manifest.backup_id} created_at")
                assert created is not None
                retention = created + timedelta(days=days)
            try:
                with self.connect() as conn:
                    self._complete(conn, manifest, sha, replicas, retention, required_targets, actor)
            except IntegrityError as e:
                result.skipped[manifest.backup_id] = str(e)
                continue
            result.rebuilt.append(manifest.backup_id)
        with self.connect() as conn:
            self._audit(
                conn,
                "catalog_rebuilt",
                actor=actor,
                details={"rebuilt": result.rebuilt, "skipped": sorted(result.skipped)},
            )
        return result
