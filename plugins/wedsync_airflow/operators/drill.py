"""The restore drill operator: one drill (core: wedsync_backup.drill), recorded, alerted when it fails."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException
from wedsync_backup.assurance_policy import load_assurance
from wedsync_backup.drill import DrillRequest, run_drill
from wedsync_backup.errors import ConfigError

from wedsync_airflow.connections import catalog, keyring, pg_target
from wedsync_airflow.notifiers import send_alert
from wedsync_airflow.operators.base import WedSyncOperator, run_id_of
from wedsync_airflow.targets import build_targets

# How the run was started -> which backup it drills.
TRIGGERS = {"asset_triggered": "after_backup", "scheduled": "weekly", "manual": "manual"}


class RestoreDrillOperator(WedSyncOperator):
    """Restore a backup into a scratch database on ``drill_target``, check it, record it, drop the scratch.

    After a new full backup (Asset): the newest verified full. Weekly (schedule): a random older backup at a
    random moment of its point-in-time window. Manual: ``backup_id``, or the newest; ``target_time`` for a
    point-in-time drill. Fails (and alerts) when the drill fails.
    """

    template_fields = (*WedSyncOperator.template_fields, "backup_id", "target_time", "from_target")

    def __init__(
        self,
        *,
        backup_id: str | None = None,
        target_time: str | None = None,
        from_target: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.target_time = target_time
        self.from_target = from_target

    def execute(self, context: Any) -> dict[str, Any]:
        result = self.guarded(lambda: self._run(context))
        if not result["passed"]:
            raise AirflowFailException(
                f"Restore drill of {result['backup_id']} FAILED: {'; '.join(result['problems'])}. "
                "See the backup_tests row of this run (errors_found); an alert was sent"
            )
        return result

    def _request(self, context: Any) -> DrillRequest:
        run_type = str(getattr(context["dag_run"], "run_type", "manual")).split(".")[-1].lower()
        until = None
        if _given(self.target_time):
            try:
                until = datetime.fromisoformat(str(self.target_time).replace("Z", "+00:00"))
            except ValueError as e:
                raise ConfigError(
                    f"target_time '{self.target_time}' is not an ISO 8601 time",
                    fix="write it like 2026-11-21T14:30:00Z",
                ) from e
            if until.tzinfo is None:
                raise ConfigError(f"target_time '{self.target_time}' has no time zone", fix="add Z or an offset")
        return DrillRequest(
            trigger=TRIGGERS.get(run_type, "manual"),
            backup_id=str(self.backup_id) if _given(self.backup_id) else None,
            until=until,
            from_target=str(self.from_target) if _given(self.from_target) else None,
        )

    def _run(self, context: Any) -> dict[str, Any]:
        policy = self.policy()
        drills = load_assurance(self.policy_path or None).drills
        request = self._request(context)
        if request.from_target:
            policy.target(request.from_target)
        cat = catalog(policy)
        cat.migrate()
        server = pg_target(drills.conn_id, "drill target")
        run_id = run_id_of(context)
        result = run_drill(
            cat,
            {s.name: s for s in build_targets(policy)},
            keyring(policy.encryption_conn_id),
            server,
            request,
            queries=drills.validation_queries,
            run_key=f"{self.dag_id}|{run_id}",
            tested_by=f"airflow:{self.dag_id}",
            notify=lambda alert: send_alert(alert, policy_path=self.policy_path or None),
            dag_id=self.dag_id,
            run_id=run_id,
            workers=drills.workers,
        )
        return result.as_dict()


def _given(value: Any) -> bool:
    return value not in (None, "", "None")
