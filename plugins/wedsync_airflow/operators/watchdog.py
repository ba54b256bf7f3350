"""The RPO watchdog operator: check every tier's newest verified recovery point against its objective."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from wedsync_backup.assurance_policy import load_assurance
from wedsync_backup.watchdog import run_watchdog

from wedsync_airflow.connections import catalog
from wedsync_airflow.notifiers import send_alert
from wedsync_airflow.operators.base import WedSyncOperator


class RpoWatchdogOperator(WedSyncOperator):
    """Record and alert RPO breaches (once each) and their end; returns every tier's state."""

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(self._run)

    def _run(self) -> dict[str, Any]:
        policy = self.policy()
        objectives = dict(load_assurance(self.policy_path or None).rpo)
        if not policy.incremental.enabled:
            objectives.pop("incremental", None)
        cat = catalog(policy)
        cat.migrate()
        result = run_watchdog(
            cat,
            objectives,
            datetime.now(UTC),
            notify=lambda alert: send_alert(alert, policy_path=self.policy_path or None),
            weddings=policy.weddings,
        )
        for state in result.states:
            self.log.info("%s", state.as_dict())
        return result.as_dict()
