"""Adapters for emergency restore over ``wedsync_backup.commands.restore``: plan -> restore -> put_back."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from airflow.sdk import SkipMixin
from airflow.sdk.exceptions import AirflowSkipException
from wedsync_backup.commands import restore as cmd
from wedsync_backup.commands.files_restore import left_out, restore_files_for, target_bucket
from wedsync_backup.commands.resources import NothingToDo, Resources
from wedsync_backup.commands.restore import RESTORE_FATAL, RestoreRequest
from wedsync_backup.partial.request import WEDDING_ONLY

from wedsync_airflow.operators.base import peak_memory
from wedsync_airflow.operators.command import CommandOperator
from wedsync_airflow.resources import build_storages_in_background


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
        "target_files_conn_id",
        "target_files_bucket",
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
        target_files_conn_id: str | None = None,
        target_files_bucket: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.target_files_conn_id = target_files_conn_id
        self.target_files_bucket = target_files_bucket
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

    def restore_files(self, res: Resources) -> dict[str, Any]:
        """The files component as this run asks for it (NothingToDo when it holds no files)."""
        return restore_files_for(
            res,
            self.request(),
            self.components,
            target_files_conn_id=self.target_files_conn_id,
            target_files_bucket=self.target_files_bucket,
        )

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


class RestoreOperator(_AfterPlan, SkipMixin):
    """Restore the planned backup; on a dry run, stop here (skipped) having touched nothing.

    Scope wedding-only: the weddings' own files (a few objects) are brought back here too, right after their rows,
    and the files task downstream is skipped: it would only do the same again in a task process of its own. The
    result and the log say what the files step did. Should that step fail, the files task is left to run and
    does it (with its own retries), as for every other scope."""

    _building: Resources | None = None  # resources whose storages pre_execute started building

    def pre_execute(self, context: Any) -> None:
        """A partial restore's storages start building here, before the task's alert callback runs (its safety
        snapshot waits on them). Whatever fails here is left for execute, to fail there as it would."""
        with contextlib.suppress(Exception):
            req = self.request()
            if self.database_left_out() is None and req.is_partial and not req.is_dry_run:
                self._building = self._build_ahead(self.build_resources())

    def _build_ahead(self, res: Resources) -> Resources:
        """Every target's storage (its safety snapshot goes to each) and the files bucket, built meanwhile."""
        files = [self.files_target(res)] if self.scope == WEDDING_ONLY and self.files_tasks() else []
        build_storages_in_background(res, *files)
        return res

    def execute(self, context: Any) -> dict[str, Any]:
        left_out = self.database_left_out()
        if left_out:
            self.log.info(left_out)
            return {"database": left_out}
        req = self.request()
        res = self._building
        if res is None:
            res = self.build_resources()
            if req.is_partial and not req.is_dry_run:
                self._build_ahead(res)
        result = self.call(
            lambda: cmd.restore(
                res,
                req,
                self.planned(),
                self.run_of(context),
                event_id=self.event(),
                retry=context["ti"].try_number > 1,
            ),
            fatal=RESTORE_FATAL,
        )
        files_tasks = self.files_tasks()
        if self.scope == WEDDING_ONLY and files_tasks and self.files_here(res, result):
            context["ti"].xcom_push(key="return_value", value=result)  # skipping ends execute before Airflow does
            self.log.info("Peak memory: %s", peak_memory())  # (nor does post_execute run)
            self.log.info("Skipping %s: this task did its work", ", ".join(t.task_id for t in files_tasks))
            self.skip(context["ti"], files_tasks)
        return result

    def files_tasks(self) -> list[Any]:
        from wedsync_airflow.operators.files import RestoreFilesOperator

        return [t for t in self.downstream_list if isinstance(t, RestoreFilesOperator)]

    def files_target(self, res: Resources) -> Callable[[], object]:
        """The bucket the weddings' files go back to (built ahead: see ``files_here``)."""
        return lambda: target_bucket(res, self.target_files_conn_id, self.target_files_bucket)

    def files_here(self, res: Resources, result: dict[str, Any]) -> bool:
        """The weddings' files, into ``result['files']``; False (the files task does them) when that failed."""
        try:
            files: dict[str, Any] = dict(self.restore_files(res))
            weddings = ", ".join(map(str, result.get("weddings") or []))
            self.log.info("Files of wedding(s) %s restored: %s", weddings, files)
        except NothingToDo as e:
            files = {"restored": False, "why": str(e)}
            self.log.info("Files: %s", e)
        except Exception as e:  # the database part is done and committed: the files task tries again
            self.log.warning("Files not restored by this task (%s: %s): the files task does it", type(e).__name__, e)
            return False
        result["files"] = files
        return True


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
