"""wedding_backups (one row per wedding per wedding backup: the wedding's recovery point) and the overrides of
the proximity tier in wedding_backup_settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from psycopg.types.json import Jsonb

from wedsync_backup.catalog.audit import write_audit
from wedsync_backup.catalog.connection import CatalogBase, Conn, aware, parse_time
from wedsync_backup.errors import ConfigError
from wedsync_backup.manifest import Manifest
from wedsync_backup.weddings.policy import RETENTION_POLICIES

MIN_FREQUENCY_MINUTES = 15


def record_wedding_backups(conn: Conn, manifest: Manifest) -> None:
    """In the transaction that completes a wedding backup: one row per wedding (idempotent)."""
    section = manifest.weddings
    if section is None:
        return
    at = parse_time(manifest.consistent_point.get("time") or manifest.created_at, "wedding backup time")
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO wedding_backups (backup_id, wedding_id, wedding_date, phase, recovery_timestamp,
                row_counts, parent_row_counts, object_key, plain_bytes, stored_bytes, checksum, stored_sha256,
                retention_policy)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (backup_id, wedding_id) DO NOTHING
            """,
            [
                (
                    manifest.backup_id,
                    w.wedding_id,
                    w.wedding_date,
                    w.phase,
                    at,
                    Jsonb(w.row_counts),
                    Jsonb(w.parent_row_counts),
                    w.object.key,
                    w.object.plain_bytes,
                    w.object.stored_bytes,
                    w.object.plain_sha256,
                    w.object.stored_sha256,
                    w.retention_policy,
                )
                for w in section.weddings
            ],
        )


@dataclass(frozen=True)
class SettingsVerdict:
    """What saving a settings row decided: refused rows raise; accepted ones may carry a 3-2-1 warning."""

    wedding_id: str
    warning: str | None


class WeddingBackups(CatalogBase):
    def last_wedding_backups(self, wedding_ids: Sequence[str]) -> dict[str, datetime]:
        """Each wedding's newest verified, unpruned wedding backup time (its newest recovery point)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT w.wedding_id, max(w.recovery_timestamp) AS at FROM wedding_backups w"
                " JOIN backup_operations b USING (backup_id) WHERE b.status = 'completed' AND b.pruned_at IS NULL"
                " AND w.wedding_id = ANY(%s) GROUP BY w.wedding_id",
                (list(wedding_ids),),
            ).fetchall()
        return {r["wedding_id"]: r["at"] for r in rows}

    def wedding_backups(self, wedding_id: str) -> list[dict[str, Any]]:
        """The wedding's restorable backups, newest first."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT w.* FROM wedding_backups w JOIN backup_operations b USING (backup_id)"
                " WHERE w.wedding_id = %s AND b.status = 'completed' AND b.pruned_at IS NULL"
                " ORDER BY w.recovery_timestamp DESC",
                (wedding_id,),
            ).fetchall()

    def wedding_settings(self) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute("SELECT * FROM wedding_backup_settings ORDER BY wedding_id").fetchall()

    def save_wedding_settings(
        self,
        wedding_id: str,
        *,
        wedding_date: date,
        actor: str,
        rule_321_problems: Sequence[str] = (),
        enforce_321: bool = True,
        proximity_days: int = 7,
        frequency_minutes: int = MIN_FREQUENCY_MINUTES,
        high_priority_from: datetime | None = None,
        high_priority_until: datetime | None = None,
        retention_policy: str | None = None,
        targets: Sequence[str] | None = None,
        enabled: bool = True,
    ) -> SettingsVerdict:
        """Save a wedding's overrides. Refused (ConfigError, nothing written) when the frequency is under 15
        minutes, the retention policy is unknown, or the targets asked for break the 3-2-1 rule while the
        policy enforces it; with enforcement off such a row is saved with its warning recorded."""
        if frequency_minutes < MIN_FREQUENCY_MINUTES:
            raise ConfigError(
                f"Wedding {wedding_id}: a backup every {frequency_minutes} minutes is too often",
                f"the proximity tier backs weddings up at most every {MIN_FREQUENCY_MINUTES} minutes",
                f"set frequency_minutes to {MIN_FREQUENCY_MINUTES} or more",
            )
        if retention_policy is not None and retention_policy not in RETENTION_POLICIES:
            raise ConfigError(
                f"Wedding {wedding_id}: unknown retention policy '{retention_policy}'",
                fix=f"use one of {', '.join(RETENTION_POLICIES)}",
            )
        aware(high_priority_from, "high_priority_from")
        aware(high_priority_until, "high_priority_until")
        warning = None
        if rule_321_problems:
            text = "; ".join(rule_321_problems)
            if enforce_321:
                raise ConfigError(
                    f"Wedding {wedding_id}: these settings break the 3-2-1 rule",
                    text,
                    "keep every target (leave targets empty), or set rule_321.enforce: false to accept it with a "
                    "recorded warning",
                )
            warning = (
                f"3-2-1 rule NOT met for wedding {wedding_id} ({text}); accepted because rule_321.enforce is false"
            )
        with self.connect() as conn:
            conn.execute(
                """
                INSERT INTO wedding_backup_settings (wedding_id, wedding_date, proximity_days, frequency_minutes,
                    enabled, high_priority_from, high_priority_until, retention_policy, targets, rule_321_warning)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (wedding_id) DO UPDATE SET wedding_date = EXCLUDED.wedding_date,
                    proximity_days = EXCLUDED.proximity_days, frequency_minutes = EXCLUDED.frequency_minutes,
                    enabled = EXCLUDED.enabled, high_priority_from = EXCLUDED.high_priority_from,
                    high_priority_until = EXCLUDED.high_priority_until,
                    retention_policy = EXCLUDED.retention_policy, targets = EXCLUDED.targets,
                    rule_321_warning = EXCLUDED.rule_321_warning, updated_at = now()
                """,
                (
                    wedding_id,
                    wedding_date,
                    proximity_days,
                    frequency_minutes,
                    enabled,
                    high_priority_from,
                    high_priority_until,
                    retention_policy,
                    list(targets) if targets is not None else None,
                    warning,
                ),
            )
            if warning:
                write_audit(
                    conn,
                    "wedding_settings_321_warning",
                    actor=actor,
                    details={"wedding_id": wedding_id, "warning": warning},
                )
        return SettingsVerdict(wedding_id, warning)
