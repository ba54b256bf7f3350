"""The scrub operator: today's share of retained copies re-verified, damaged ones repaired (core: scrub.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from wedsync_backup.assurance_policy import load_assurance
from wedsync_backup.scrub import MB, run_scrub

from wedsync_airflow.connections import catalog, keyring
from wedsync_airflow.notifiers import send_alert
from wedsync_airflow.operators.base import WedSyncOperator, run_id_of
from wedsync_airflow.targets import build_targets


class ScrubOperator(WedSyncOperator):
    """Re-verify copies within the policy's daily budget; repair; record; alert damage. ``backup_id``: only it."""

    template_fields = (*WedSyncOperator.template_fields, "backup_id")

    def __init__(self, *, backup_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(lambda: self._run(context))

    def _run(self, context: Any) -> dict[str, Any]:
        policy = self.policy()
        scrub = load_assurance(self.policy_path or None).scrub
        cat = catalog(policy)
        cat.migrate()
        only = {str(self.backup_id)} if self.backup_id not in (None, "", "None") else None
        result = run_scrub(
            cat,
            {s.name: s for s in build_targets(policy)},
            keyring(policy.encryption_conn_id),
            cycle_days=scrub.cycle_days,
            budget_bytes=scrub.daily_budget_mb * MB,
            now=datetime.now(UTC),
            notify=lambda alert: send_alert(alert, policy_path=self.policy_path or None),
            tested_by=f"airflow:{self.dag_id}",
            dag_id=self.dag_id,
            run_id=run_id_of(context),
            only=only,
        )
        self.log.info("Scrub: %s", result.as_dict())
        return result.as_dict()
