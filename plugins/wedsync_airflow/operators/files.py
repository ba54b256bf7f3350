"""Adapters for the files component: the emergency restore's files task, and the alert for damaged sources."""

from __future__ import annotations

from typing import Any

from wedsync_backup import alerts

from wedsync_airflow.operators.restore import _RestoreParams


class RestoreFilesOperator(_RestoreParams):
    """Write the files (photos, documents) as they were at the restored point back to a bucket; a dry run
    reports how many objects and bytes would be written. Skipped when ``components`` leaves files out."""

    def execute(self, context: Any) -> dict[str, Any]:
        return self.call(lambda: self.restore_files(self.build_resources()))


def alert_files_problems(backup_id: str, problems: list[str], context: Any) -> None:
    """Missing or corrupt source files found by a capture: alert where the policy sets channels."""
    if problems:
        from wedsync_airflow.notifiers import send_alert

        send_alert(alerts.files_damaged(backup_id=backup_id, problems=problems), context=context)
