"""Operators for emergency restore: plan (every check, nothing touched) -> restore (all or nothing)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException
from wedsync_backup.catalog import Catalog
from wedsync_backup.errors import ConfigError, CryptoError, IntegrityError, WedSyncError
from wedsync_backup.manifest import Manifest
from wedsync_backup.pitr import ChainPlan, plan_chain, restore_to_point
from wedsync_backup.policy import Policy
from wedsync_backup.repository import committed_manifests, read_manifest
from wedsync_backup.restore import (
    FRESH_PUBLIC,
    check_objects_present,
    plan_restore,
    reset_target,
    restore_backup,
    target_contents,
    verify_manifest_mac,
)

from wedsync_airflow.connections import catalog, keyring, pg_target
from wedsync_airflow.operators.base import WedSyncOperator, run_id_of
from wedsync_airflow.recovery_point_param import named_point_time
from wedsync_airflow.targets import build_storage

MODES = ("latest", "backup_id", "point_in_time")
# A damaged or undecryptable copy reads the same on a retry: fail at once, pointing to another target.
RESTORE_FATAL = (ConfigError, CryptoError, IntegrityError)
SCOPES = ("complete",)


def expected_confirmation(target_conn_id: str) -> str:
    return f"RESTORE {target_conn_id}"


class _RestoreParams(WedSyncOperator):
    template_fields = (
        *WedSyncOperator.template_fields,
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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

    @property
    def is_dry_run(self) -> bool:
        return self.dry_run not in (False, "False", "false", 0, "0")

    def validate(self, policy: Policy) -> None:
        """Cross-field checks the JSON schema cannot express; each names the parameter to fix."""
        if self.mode not in MODES:
            raise ConfigError(f"Unknown mode '{self.mode}'", fix=f"set mode to one of {', '.join(MODES)}")
        if self.mode == "backup_id" and not self.backup_id:
            raise ConfigError("mode is 'backup_id' but no backup_id was given", fix="set the backup_id parameter")
        self.until()  # point_in_time: a usable target_time or recovery_point; other modes: no recovery_point
        if self.scope not in SCOPES:
            raise ConfigError(f"Restore scope '{self.scope}' is not available", fix=f"use scope {', '.join(SCOPES)}")
        policy.target(self.from_target)
        if not self.target_conn_id:
            raise ConfigError("No target_conn_id given", fix="name the Airflow connection of the empty database")
        if self.target_conn_id in (policy.source_conn_id, policy.catalog_conn_id):
            raise ConfigError(
                f"target_conn_id '{self.target_conn_id}' is the backup source or catalog",
                "a restore goes into an empty database, never over live data",
                "create an empty database, add a connection for it and name that connection",
            )
        if not self.is_dry_run and (self.confirm or "").strip() != expected_confirmation(self.target_conn_id):
            raise ConfigError(
                "Restore not confirmed",
                f"with dry_run=false the confirm parameter must be exactly "
                f"'{expected_confirmation(self.target_conn_id)}' (it was '{self.confirm or ''}')",
                "type the confirmation exactly, or run with dry_run=true to see the plan first",
            )
        if not (self.reason or "").strip():
            raise ConfigError("No reason given", fix="say why this restore is run (the reason parameter)")

    def until(self) -> datetime | None:
        """The moment to restore to (point_in_time), refused clearly when it is not a usable ISO 8601 time."""
        named = named_point_time(self.recovery_point, self.mode, self.target_time, self.policy)
        if named is not None:
            return named
        if self.mode != "point_in_time":
            return None
        text = str(self.target_time or "").strip()
        if not text or text == "None":
            raise ConfigError(
                "mode is 'point_in_time' but no target_time was given",
                fix="set target_time, e.g. 2026-11-21T14:30:00Z (ISO 8601 with a time zone)",
            )
        try:
            at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as e:
            raise ConfigError(
                f"target_time '{text}' is not an ISO 8601 time", str(e), "write it like 2026-11-21T14:30:00Z"
            ) from e
        if at.tzinfo is None:
            raise ConfigError(
                f"target_time '{text}' has no time zone",
                "a restore point must be unambiguous",
                "add Z (UTC) or an offset such as +01:00",
            )
        if at > datetime.now(UTC):
            raise ConfigError(f"target_time '{text}' is in the future", fix="choose a moment that has passed")
        return at.astimezone(UTC)

    def chain_plan(self, policy: Policy) -> ChainPlan | None:
        """latest / point_in_time: the full backup and the incrementals to replay (None for backup_id)."""
        if self.mode == "backup_id":
            return None
        storage = build_storage(policy.target(self.from_target))
        manifests = committed_manifests(storage)
        if not manifests:
            raise ConfigError(
                f"No completed backup on target {self.from_target} ({storage.url()})",
                fix="pick another from_target, or run backup_daily_full first",
            )
        try:
            return plan_chain(manifests, self.until())
        except IntegrityError as e:
            raise ConfigError(e.what, e.why, e.fix) from e

    def try_catalog(self, policy: Policy) -> Catalog | None:
        """The catalog, or None when it is down too: a restore must work from the repository alone."""
        try:
            cat = catalog(policy)
            cat.migrate()
            return cat
        except WedSyncError as e:
            self.log.warning("Catalog unavailable (%s); restoring from the repository alone", e)
            return None

    def resolve_manifest(self, policy: Policy, cat: Catalog | None) -> Manifest:
        storage = build_storage(policy.target(self.from_target))
        if self.mode == "backup_id":
            return read_manifest(storage, str(self.backup_id))
        manifests = [m for m in committed_manifests(storage) if m.backup_type in ("full", "archive", "manual")]
        if not manifests:
            raise ConfigError(
                f"No completed backup on target {self.from_target} ({storage.url()})",
                fix="pick another from_target, or run backup_daily_full first",
            )
        return max(manifests, key=lambda m: m.consistent_point.get("time") or m.created_at)


class PlanRestoreOperator(_RestoreParams):
    """Validate every parameter and the backup, record the event, and report the plan. Touches nothing."""

    def execute(self, context: Any) -> dict[str, Any]:
        policy = self.guarded(self.policy)
        cat = self.try_catalog(policy)
        event_id = None
        if cat is not None:
            event_id = cat.start_recovery_event(
                event_type="emergency_restore",
                dag_id=self.dag_id,
                run_id=run_id_of(context),
                mode=self.mode,
                scope=self.scope,
                from_target=self.from_target,
                target_conn_id=self.target_conn_id,
                dry_run=self.is_dry_run,
                reason=self.reason,
                triggered_by=_triggered_by(context),
                backup_id=self.backup_id,
            )
        try:
            plan = self.guarded(lambda: self._plan(policy))
        except Exception as e:
            if cat is not None and event_id is not None:
                cat.finish_recovery_event(event_id, status="refused", error=str(e))
            raise
        context["ti"].xcom_push(key="event_id", value=event_id)
        if cat is not None and event_id is not None and self.is_dry_run:
            cat.finish_recovery_event(event_id, status="planned", result=plan)
        self.log.info("Restore plan: %s", plan)
        return plan

    def _plan(self, policy: Policy) -> dict[str, Any]:
        self.validate(policy)
        target = pg_target(self.target_conn_id, "restore target")
        chain = self.chain_plan(policy)
        storage = build_storage(policy.target(self.from_target))
        ring = keyring(policy.encryption_conn_id)
        manifest = chain.full if chain else self.resolve_manifest(policy, None)
        plan = plan_restore(manifest, storage, ring, target).as_dict()
        plan["dry_run"] = self.is_dry_run
        plan["data_loss_minutes"] = _minutes_since(plan["consistent_time"])
        if chain is not None:
            for m in chain.increments:
                verify_manifest_mac(m, ring)
                check_objects_present(m, storage)
            plan.update(chain.as_dict())
            plan["data_loss_minutes"] = _data_loss_minutes(chain)
        return plan


class RestoreOperator(_RestoreParams):
    """Restore the planned backup; on a dry run, stop here (skipped) having touched nothing."""

    template_fields = (*_RestoreParams.template_fields, "plan", "event_id")

    def __init__(self, *, plan: dict[str, Any] | str, event_id: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.event_id = event_id

    def execute(self, context: Any) -> dict[str, Any]:
        if self.is_dry_run:
            raise AirflowSkipException(
                f"Dry run: the plan is in the 'plan' task. To restore, trigger again with dry_run=false and "
                f"confirm='{expected_confirmation(self.target_conn_id)}'"
            )
        policy = self.guarded(self.policy)
        cat = self.try_catalog(policy)
        event_id = int(self.event_id) if self.event_id not in (None, "", "None") else None
        try:
            result = self.guarded(lambda: self._restore(policy, context), fatal=RESTORE_FATAL)
        except Exception as e:
            if cat is not None and event_id is not None:
                cat.finish_recovery_event(event_id, status="failed", error=str(e))
            raise
        if cat is not None and event_id is not None:
            cat.finish_recovery_event(
                event_id, status="completed", result=result, data_loss_minutes=result["data_loss_minutes"]
            )
            cat.audit(
                "emergency_restore",
                actor=_triggered_by(context),
                backup_id=result["backup_id"],
                details={"target_conn_id": self.target_conn_id, "from_target": self.from_target},
            )
        return result

    def _restore(self, policy: Policy, context: Any) -> dict[str, Any]:
        self.validate(policy)
        storage = build_storage(policy.target(self.from_target))
        plan = self.plan if isinstance(self.plan, dict) else {}
        manifest = read_manifest(storage, str(plan.get("backup_id")))
        target = pg_target(self.target_conn_id, "restore target")
        if context["ti"].try_number > 1 and target_contents(target):
            # The plan task proved this target empty at the start of this run: what is there now is
            # this run's own interrupted attempt, so it is put back to empty before trying again.
            self.log.warning("Retry: removing the interrupted attempt of this run from %s", self.target_conn_id)
            reset_target(target, FRESH_PUBLIC)
        ring = keyring(policy.encryption_conn_id)
        increments = [read_manifest(storage, b) for b in plan.get("incremental_backup_ids") or []]
        if self.mode == "backup_id":
            result = restore_backup(manifest, storage, ring, target, workers=policy.export_workers).as_dict()
            result["data_loss_minutes"] = _minutes_since(manifest.consistent_point.get("time"))
        else:
            chain = ChainPlan(
                manifest, increments, self.until(), plan.get("last_captured_change"), str(plan.get("covered_until"))
            )
            result = restore_to_point(chain, storage, ring, target, workers=policy.export_workers)
            result["data_loss_minutes"] = _data_loss_minutes(chain)
        result["from_target"] = self.from_target
        result["target_conn_id"] = self.target_conn_id
        result["consistent_time"] = manifest.consistent_point.get("time")
        self.log.info("Restore complete: %s", result)
        return result


def _data_loss_minutes(chain: ChainPlan) -> float | None:
    """Point in time: minutes between the chosen moment and the last captured change (what is left out).
    Latest: minutes since the last captured change (what no backup holds)."""
    last = chain.last_captured or chain.full.consistent_point.get("time")
    if chain.until is None:
        return _minutes_since(last)
    if not last:
        return None
    return round(max(0.0, (datetime.fromisoformat(last) - chain.until).total_seconds() / 60), 1)


def _minutes_since(iso: str | None) -> float | None:
    if not iso:
        return None
    return round((datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds() / 60, 1)


def _triggered_by(context: Any) -> str:
    dag_run = context["dag_run"]
    return str(getattr(dag_run, "triggering_user_name", None) or getattr(dag_run, "run_type", "") or "unknown")
