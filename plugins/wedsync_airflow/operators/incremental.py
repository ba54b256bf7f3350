"""Adapters for the hourly incremental over ``wedsync_backup.commands.incremental``.

preflight (begin) -> capture -> [replicate, verify, commit: the backup adapters] -> release_slot.
"""

from __future__ import annotations

from typing import Any

from wedsync_backup.commands import incremental as cmd
from wedsync_backup.commands.incremental import IncrementalPlan

from wedsync_airflow.operators.command import CommandOperator
from wedsync_airflow.operators.files import alert_files_problems


class IncrementalPreflightOperator(CommandOperator):
    """Catalog, targets, 3-2-1; the chain to continue; slot safety; schema changes. Returns the plan."""

    def execute(self, context: Any) -> dict[str, Any]:
        plan = self.call(lambda: cmd.begin(self.build_resources(), self.run_of(context)))
        ti = context["ti"]
        ti.xcom_push(key="backup_id", value=plan.backup_id)
        ti.xcom_push(key="action", value=plan.action)
        return plan.as_dict()


class CaptureIncrementalOperator(CommandOperator):
    """Capture the chain's pending changes to the primary (pending manifest). Pushes ``manifest_sha256``."""

    template_fields = (*CommandOperator.template_fields, "backup_id", "plan")

    def __init__(self, *, backup_id: str, plan: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        plan = IncrementalPlan.from_dict(self.plan)
        result = self.call(lambda: cmd.capture(self.build_resources(), self.backup_id, plan, self.run_of(context)))
        ti = context["ti"]
        ti.xcom_push(key="manifest_sha256", value=result.manifest_sha256)
        ti.xcom_push(key="chain_ended", value=bool(result.chain_end))  # the DAG then triggers a full backup
        alert_files_problems(self.backup_id, result.files_problems, context)
        return result.as_dict()


class ReleaseSlotOperator(CommandOperator):
    """After the incremental is committed on every target: advance the slot to its end (or drop a closed one)."""

    template_fields = (*CommandOperator.template_fields, "backup_id", "manifest_sha256", "plan")

    def __init__(self, *, backup_id: str, manifest_sha256: str, plan: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.manifest_sha256 = manifest_sha256
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        plan = IncrementalPlan.from_dict(self.plan)
        return self.call(lambda: cmd.release(self.build_resources(), self.backup_id, self.manifest_sha256, plan))
