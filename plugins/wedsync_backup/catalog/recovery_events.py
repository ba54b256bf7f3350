"""disaster_recovery_events: every emergency restore (or drill), planned, refused, run; one row per run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from wedsync_backup.catalog.connection import CatalogBase
from wedsync_backup.errors import ConfigError

EVENT_STATUSES = ("planned", "in_progress", "completed", "failed", "refused")
RECOVERY_TYPES = ("full_restore", "point_in_time", "partial_restore")


@dataclass
class RecoveryDetails:
    """The specification's columns of a restore event; None leaves a column as it is (filled in stages)."""

    recovery_type: str | None = None
    target_timestamp: datetime | None = None
    backup_used: str | None = None
    recovery_environment: str | None = None  # production (into the live source) or isolated
    affected_users_count: int | None = None
    business_impact_level: str | None = None  # low, medium, high, critical
    initiated_by: str | None = None
    approved_by: str | None = None
    safety_snapshot_id: str | None = None
    affected_wedding_ids: list[str] | None = None
    table_row_counts: dict[str, dict[str, int]] | None = None


class RecoveryEvents(CatalogBase):
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

    def record_recovery_details(self, event_id: int, details: RecoveryDetails) -> None:
        """Fill the event's specification columns; a field left None keeps what the row holds."""
        values = {k: v for k, v in asdict(details).items() if v is not None}
        if not values:
            return
        if "table_row_counts" in values:
            values["table_row_counts"] = Jsonb(values["table_row_counts"])
        sets = ", ".join(f"{k} = %({k})s" for k in values)  # keys are the dataclass's own field names
        with self.connect() as conn:
            conn.execute(
                f"UPDATE disaster_recovery_events SET {sets}, updated_at = now() WHERE id = %(event_id)s",
                {**values, "event_id": event_id},
            )
