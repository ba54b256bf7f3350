"""emergency_restore's cross-field checks, run by the api-server before a DAG run exists.

A JSON schema per Param checks each parameter alone (Airflow validates them one by one); what depends on two
parameters (the confirmation and the target, the mode and its time or backup id) is checked here, on the
conf of a trigger request, by the api-server middleware in plugins/wedsync_restore_guard.py. The ``plan``
task repeats every check at run time, for triggers that do not pass through the api-server (the CLI).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from wedsync_backup.commands.restore import expected_confirmation
from wedsync_backup.partial.request import scope_problems

DAG_ID = "emergency_restore"
TRIGGER_PATH = f"/api/v2/dags/{DAG_ID}/dagRuns"


def _is_dry_run(value: Any) -> bool:
    return value not in (False, "False", "false", 0, "0")


def _time_problem(text: str) -> str | None:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return f"target_time '{text}' is not an ISO 8601 time: write it like 2026-11-21T14:30:00Z"
    if at.tzinfo is None:
        return f"target_time '{text}' has no time zone: add Z (UTC) or an offset such as +01:00"
    if at > datetime.now(UTC):
        return f"target_time '{text}' is in the future: choose a moment that has passed"
    return None


def cross_field_problems(conf: dict[str, Any]) -> list[str]:
    """Each problem as one sentence naming the parameter to fix; empty when the combination is valid."""
    problems: list[str] = []
    mode = conf.get("mode", "latest")
    target = conf.get("target_conn_id") or ""
    if not _is_dry_run(conf.get("dry_run", True)):
        want = expected_confirmation(target)
        got = (conf.get("confirm") or "").strip()
        if got != want:
            problems.append(
                f"Restore not confirmed: with dry_run=false, confirm must be exactly '{want}' (it was '{got}'); "
                "or run with dry_run=true to see the plan first"
            )
    if mode == "point_in_time":
        text = str(conf.get("target_time") or "").strip()
        if not text:
            problems.append("mode is 'point_in_time' but no target_time was given: set it, e.g. 2026-11-21T14:30:00Z")
        elif why := _time_problem(text):
            problems.append(why)
    if mode == "backup_id" and not conf.get("backup_id"):
        problems.append("mode is 'backup_id' but no backup_id was given: set backup_id (see backup_operations)")
    return problems + scope_problems(conf)
