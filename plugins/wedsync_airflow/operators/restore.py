"""Adapters for emergency restore over ``wedsync_backup.commands.restore``: plan -> restore -> put_back."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowSkipException
from wedsync_backup.commands import restore as cmd
from wedsync_backup.commands.files_restore import left_out
from wedsync_backup.commands.restore import RESTORE_FATAL, RestoreRequest

from wedsync_airflow.operators.command import CommandOperator


class _RestoreParams(CommandOperator):
    template_fields = (
        *CommandOperator.template_fields,
        "mode",
        "backup_id",
        "scope",
        "from_target",
        "target_conn_id",
        "dry_run",
        "confirm",
        "reason",
        "target_time",
        "recovery_point",
        "wedding_ids",
        "data_types",
        "tables",
        "into_schema",
        "components",
    )

    def __init__(
        self,
        *,
        mode: str = "latest",
        backup_id: str | None = None,
        scope: str = "complete",
        from_target: str = "primary",
        target_conn_id: str,
        dry_run: bool | str = True,
        confirm: str = "",
        reason: str = "",
        target_time: str | None = None,
        recovery_point: str | None = None,
        wedding_ids: list[str] | str | None = None,
        data_types: list[str] | str | None = None,
        tables: list[str] | str | None = None,
        into_schema: str | None = None,
        components: list[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.wedding_ids = wedding_ids
        self.data_types = data_types
        self.tables = tables
        self.into_schema = into_schema
        self.components = components
        self.target_time = target_time
        self.recovery_point = recovery_point
        self.mode = mode
        self.backup_id = backup_id
        self.scope = scope
        self.from_target = from_target
        self.target_conn_id = target_conn_id
        self.dry_run = dry_run
        self.confirm = confirm
        self.reason = reason

    def database_left_out(self) -> str | None:
        """Why this run does not restore the database (components without it), or None."""
        return self.call(lambda: left_out(self.components, "database"))

    def request(self) -> RestoreRequest:
        """The params as rendered for this run."""
        return RestoreRequest(
            target_conn_id=self.target_conn_id,
            mode=self.mode,
            backup_id=self.backup_id,
            scope=self.scope,
            from_target=self.from_target,
            dry_run=self.dry_run,
            confirm=self.confirm,
            reason=self.reason,
            target_time=self.target_time,
            recovery_point=self.recovery_point,
            wedding_ids=self.wedding_ids,
            data_types=self.data_types,
            tables=self.tables,
            into_schema=self.into_schema,
        )


class PlanRestoreOperator(_RestoreParams):
    """Validate every parameter and the backup, record the event, and report the plan. Touches nothing."""

    def execute(self, context: Any) -> dict[str, Any]:
        left_out = self.database_left_out()
        if left_out:  # files only: succeed with nothing planned, so restore_files follows (no skip chain)
            self.log.info(left_out)
            context["ti"].xcom_push(key="event_id", value="")  # (an XCom of None reads as missing)
            return {"database": left_out, "event_id": ""}
        planned = self.call(lambda: cmd.plan(self.build_resources(), self.request(), self.run_of(context)))
        context["ti"].xcom_push(key="event_id", value=planned.event_id)
        return planned.plan


class _AfterPlan(_RestoreParams):
    """The tasks after plan: they read its plan and its event id (both None when plan did not finish)."""

    template_fields = (*_RestoreParams.template_fields, "plan", "event_id")

    def __init__(self, *, plan: dict[str, Any] | str | None, event_id: int | str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.event_id = event_id

    def planned(self) -> dict[str, Any]:
        return self.plan if isinstance(self.plan, dict) else {}

    def event(self) -> int | None:
        return int(self.event_id) if self.event_id not in (None, "", "None") else None


class RestoreOperator(_AfterPlan):
    """Restore the planned backup; on a dry run, stop here (skipped) having touched nothing."""

    def execute(self, context: Any) -> dict[str, Any]:
        left_out = self.database_left_out()
        if left_out:
            self.log.info(left_out)
            return {"database": left_out}
        return self.call(
            lambda: cmd.restore(
                self.build_resources(),
                self.request(),
                self.planned(),
                self.run_of(context),
                event_id=self.event(),
                retry=context["ti"].try_number > 1,
            ),
            fatal=RESTORE_FATAL,
        )


class PutBackOperator(_AfterPlan):
    """After the restore's last try failed: put the destination back as it was, if this run's restore left it
    half-loaded (killed outright). Skipped for a dry run, a partial scope, or a run without the database."""

    def execute(self, context: Any) -> dict[str, Any]:
        left_out = self.database_left_out()
        if left_out:
            self.log.info(left_out)
            raise AirflowSkipException(left_out)
        return self.call(
            lambda: cmd.put_back(
                self.build_resources(), self.request(), self.planned(), self.run_of(context), event_id=self.event()
            )
        )
