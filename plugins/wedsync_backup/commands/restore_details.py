"""The specification's columns of a restore's ``disaster_recovery_events`` row, for every scope: what is
known when the restore is asked for, then what its plan and its result add."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from wedsync_backup.catalog.recovery_events import RecoveryDetails
from wedsync_backup.commands.resources import RunRef
from wedsync_backup.errors import ConfigError
from wedsync_backup.partial.request import as_names
from wedsync_backup.policy import Policy

if TYPE_CHECKING:
    from wedsync_backup.commands.restore import RestoreRequest


def recovery_type(req: RestoreRequest) -> str:
    if req.is_partial:
        return "partial_restore"
    return "point_in_time" if req.mode == "point_in_time" else "full_restore"


def details_at_start(req: RestoreRequest, policy: Policy, run: RunRef) -> RecoveryDetails:
    """Who asked, for what kind of restore, into which environment. A complete restore is critical (the
    platform is down or its data lost); a partial one's impact follows from what it restores (its result)."""
    from wedsync_backup.commands.restore import expected_confirmation

    who = run.triggered_by or run.actor
    confirmed = not req.is_dry_run and (req.confirm or "").strip() == expected_confirmation(req.target_conn_id)
    try:
        until = req.until()
    except ConfigError:
        until = None  # refused by validation right after, with the reason
    return RecoveryDetails(
        recovery_type=recovery_type(req),
        target_timestamp=until,
        recovery_environment="production" if req.target_conn_id == policy.source_conn_id else "isolated",
        business_impact_level=None if req.is_partial else "critical",
        initiated_by=who,
        approved_by=who if confirmed else None,
        affected_wedding_ids=as_names(req.wedding_ids) or None,
    )


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def details_of(result: dict[str, Any]) -> RecoveryDetails:
    """What a plan or a finished restore adds: the backup used, the moment, the rows per table, the snapshot."""
    tables = result.get("tables")
    counts = {k: v for k, v in tables.items() if isinstance(v, dict)} if isinstance(tables, dict) else None
    return RecoveryDetails(
        backup_used=result.get("full_backup_id") or result.get("backup_id"),
        target_timestamp=_time(result.get("until")) or _time(result.get("consistent_time")),
        safety_snapshot_id=result.get("safety_snapshot_id"),
        table_row_counts=counts or None,
        affected_users_count=result.get("affected_users_count"),
        business_impact_level=result.get("business_impact_level"),
        affected_wedding_ids=result.get("weddings") or None,
    )
