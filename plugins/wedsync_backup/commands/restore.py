"""The restore command: plan (every check, nothing touched) -> restore (all or nothing) -> put_back (only
after the restore's last try failed: what a killed restore could not undo itself).

The *destination* is the empty database a restore writes into (named by the ``target_conn_id`` param);
a *target* is always a storage copy of the backups (``from_target``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from wedsync_backup.catalog import Catalog
from wedsync_backup.commands import partial_restore
from wedsync_backup.commands.resources import NothingToDo, Resources, RunRef
from wedsync_backup.commands.restore_details import details_at_start, details_of
from wedsync_backup.drill import refuse_damaged_copy
from wedsync_backup.errors import ConfigError, CryptoError, IntegrityError, WedSyncError
from wedsync_backup.named_points import find_named_point
from wedsync_backup.partial.request import PARTIAL_SCOPES, check_partial_request
from wedsync_backup.pg import PgTarget
from wedsync_backup.pitr import ChainPlan, plan_chain, restore_to_point
from wedsync_backup.policy import Policy
from wedsync_backup.repository import committed_manifests, read_manifest
from wedsync_backup.restore import (
    FRESH_PUBLIC,
    PutBack,
    check_objects_present,
    plan_restore,
    put_back_interrupted,
    reset_target,
    restore_backup,
    target_contents,
    verify_manifest_mac,
)
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
MODES = ("latest", "backup_id", "point_in_time")
SCOPES = ("complete", *PARTIAL_SCOPES)
# A damaged or undecryptable copy reads the same on a retry: fail at once, pointing to another target.
RESTORE_FATAL: tuple[type[WedSyncError], ...] = (ConfigError, CryptoError, IntegrityError)
EVENT_TYPE = "emergency_restore"


def expected_confirmation(target_conn_id: str) -> str:
    return f"RESTORE {target_conn_id}"


def _false(value: Any) -> bool:
    return value in (False, "False", "false", 0, "0")


@dataclass
class RestoreRequest:
    """The restore's parameters as the user gave them (strings from a form or a template are accepted)."""

    target_conn_id: str
    mode: str = "latest"
    backup_id: str | None = None
    scope: str = "complete"
    from_target: str = "primary"
    dry_run: bool | str = True
    confirm: str = ""
    reason: str = ""
    target_time: str | None = None
    recovery_point: str | None = None  # a named recovery point's label, instead of target_time
    # the partial scopes (wedding-only: wedding_ids, data_types; selective: tables, into_schema)
    wedding_ids: list[str] | str | None = None
    data_types: list[str] | str | None = None
    tables: list[str] | str | None = None
    into_schema: str | None = None

    @property
    def is_dry_run(self) -> bool:
        return not _false(self.dry_run)

    @property
    def is_partial(self) -> bool:
        """wedding-only or selective: chosen rows into a live database (commands/partial_restore.py)."""
        return self.scope in PARTIAL_SCOPES

    def validate(self, policy: Policy) -> None:
        """Cross-field checks the JSON schema cannot express; each names the parameter to fix."""
        if self.mode not in MODES:
            raise ConfigError(f"Unknown mode '{self.mode}'", fix=f"set mode to one of {', '.join(MODES)}")
        if self.mode == "backup_id" and not self.backup_id:
            raise ConfigError("mode is 'backup_id' but no backup_id was given", fix="set the backup_id parameter")
        if self.mode == "point_in_time":
            self.until()
        if self.scope not in SCOPES:
            raise ConfigError(f"Restore scope '{self.scope}' is not available", fix=f"use scope {', '.join(SCOPES)}")
        check_partial_request(self.scope, self.wedding_ids, self.data_types, self.tables, self.into_schema, policy)
        policy.target(self.from_target)
        if not self.target_conn_id:
            raise ConfigError("No target_conn_id given", fix="name the Airflow connection of the empty database")
        live = (policy.catalog_conn_id,) if self.is_partial else (policy.source_conn_id, policy.catalog_conn_id)
        if self.target_conn_id in live:
            raise ConfigError(
                f"target_conn_id '{self.target_conn_id}' is the backup source or catalog",
                "a complete restore goes into an empty database, never over live data (and nothing is ever "
                "restored into the catalog)",
                "create an empty database, add a connection for it and name that connection; or bring chosen "
                "weddings or tables back into the live database with scope wedding-only or selective",
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

    def destination(self, res: Resources) -> PgTarget:
        return res.open_database(self.target_conn_id, "restore target")


UNSET = (None, "", "None")


def with_named_point(req: RestoreRequest, catalog_dsn: Callable[[], str]) -> RestoreRequest:
    """A named recovery point stands for its moment: the request with that moment as its target_time."""
    if req.recovery_point in UNSET:
        return req
    if req.mode != "point_in_time":
        raise ConfigError(
            f"recovery_point '{req.recovery_point}' is given but mode is '{req.mode}'",
            fix="set mode to point_in_time to restore to a named recovery point",
        )
    if req.target_time not in UNSET:
        raise ConfigError(
            "Both recovery_point and target_time are given",
            fix="give one of them: the named point's label, or a target_time",
        )
    point = find_named_point(catalog_dsn(), str(req.recovery_point))
    return replace(req, target_time=point["recovery_timestamp"].astimezone(UTC).isoformat())


def try_catalog(res: Resources) -> Catalog | None:
    """The catalog, or None when it is down too: a restore must work from the repository alone."""
    try:
        cat = res.catalog()
        cat.migrate()
        return cat
    except WedSyncError as e:
        log.warning("Catalog unavailable (%s); restoring from the repository alone", e)
        return None


def _chain_plan(req: RestoreRequest, storage: Storage) -> ChainPlan | None:
    """latest / point_in_time: the full backup and the incrementals to replay (None for backup_id)."""
    if req.mode == "backup_id":
        return None
    manifests = committed_manifests(storage)
    if not manifests:
        raise ConfigError(
            f"No completed backup on target {req.from_target} ({storage.url()})",
            fix="pick another from_target, or run backup_daily_full first",
        )
    try:
        return plan_chain(manifests, req.until())
    except IntegrityError as e:
        raise ConfigError(e.what, e.why, e.fix) from e


def _check(res: Resources, req: RestoreRequest) -> dict[str, Any]:
    req.validate(res.policy)
    destination = req.destination(res)
    storage = res.storage(req.from_target)
    chain = _chain_plan(req, storage)
    ring = res.keyring()
    manifest = chain.full if chain is not None else read_manifest(storage, str(req.backup_id))
    plan = plan_restore(manifest, storage, ring, destination).as_dict()
    plan["dry_run"] = req.is_dry_run
    plan["data_loss_minutes"] = _minutes_since(plan["consistent_time"])
    if chain is not None:
        for m in chain.increments:
            verify_manifest_mac(m, ring)
            check_objects_present(m, storage)
        plan.update(chain.as_dict())
        plan["data_loss_minutes"] = _data_loss_minutes(chain)
    return plan


@dataclass
class PlanResult:
    plan: dict[str, Any]
    event_id: int | None


def plan(res: Resources, req: RestoreRequest, run: RunRef) -> PlanResult:
    """Check every parameter and the backup, record the event (refused / planned / in progress). Touches
    nothing; a dry run ends here."""
    cat = try_catalog(res)
    event_id = None
    if cat is not None:
        event_id = cat.start_recovery_event(
            event_type=EVENT_TYPE,
            dag_id=run.dag_id,
            run_id=run.run_id,
            mode=req.mode,
            scope=req.scope,
            from_target=req.from_target,
            target_conn_id=req.target_conn_id,
            dry_run=req.is_dry_run,
            reason=req.reason,
            triggered_by=run.triggered_by,
            backup_id=req.backup_id,
        )
    try:
        req = with_named_point(req, lambda: res.catalog().dsn)
        if cat is not None and event_id is not None:
            cat.record_recovery_details(event_id, details_at_start(req, res.policy, run))
        if req.is_partial:
            req.validate(res.policy)
            result = partial_restore.check(res, req, run)
        else:
            result = _check(res, req)
        if cat is not None:  # the scrub's verdict: a copy (or backup) known damaged is not restored from
            refuse_damaged_copy(cat, str(result["backup_id"]), req.from_target)
    except Exception as e:
        if cat is not None and event_id is not None:
            cat.finish_recovery_event(event_id, status="refused", error=str(e))
        raise
    if cat is not None and event_id is not None:
        cat.record_recovery_details(event_id, details_of(result))
    if cat is not None and event_id is not None and req.is_dry_run:
        cat.finish_recovery_event(event_id, status="planned", result=result)
    log.info("Restore plan: %s", result)
    return PlanResult(result, event_id)


def restore(
    res: Resources,
    req: RestoreRequest,
    planned: dict[str, Any],
    run: RunRef,
    *,
    event_id: int | None,
    retry: bool,
) -> dict[str, Any]:
    """Restore what ``plan`` chose into the (empty) destination, all or nothing; a dry run does nothing."""
    if req.is_dry_run:
        raise NothingToDo(
            f"Dry run: the plan is in the 'plan' task. To restore, trigger again with dry_run=false and "
            f"confirm='{expected_confirmation(req.target_conn_id)}'"
        )
    cat = try_catalog(res)
    if cat is not None and event_id is not None:
        event = cat.get_recovery_event(event_id)
        if event is not None and event["status"] == "completed" and event["result"]:
            # this run's restore already finished (the task died before reporting it): never redo it
            log.info("Restore of this run already completed: %s", event["result"])
            return dict(event["result"])
    try:
        req = with_named_point(req, lambda: res.catalog().dsn)
        if req.is_partial:
            req.validate(res.policy)
            result = partial_restore.apply(res, req, run)
        else:
            result = _restore(res, req, planned, retry)
    except Exception as e:
        if cat is not None and event_id is not None:
            cat.finish_recovery_event(event_id, status="failed", error=str(e))
        raise
    if cat is not None and event_id is not None:
        cat.record_recovery_details(event_id, details_of(result))
        cat.finish_recovery_event(
            event_id, status="completed", result=result, data_loss_minutes=result["data_loss_minutes"]
        )
        cat.audit(
            EVENT_TYPE,
            actor=run.triggered_by or run.actor,
            backup_id=result["backup_id"],
            details={"target_conn_id": req.target_conn_id, "from_target": req.from_target},
        )
    return result


def _restore(res: Resources, req: RestoreRequest, planned: dict[str, Any], retry: bool) -> dict[str, Any]:
    req.validate(res.policy)
    storage = res.storage(req.from_target)
    manifest = read_manifest(storage, str(planned.get("backup_id")))
    destination = req.destination(res)
    if retry and target_contents(destination):
        # The plan proved the destination empty at the start of this run: what is there now is this
        # run's own interrupted attempt, so it is put back to empty before trying again.
        log.warning("Retry: removing the interrupted attempt of this run from %s", req.target_conn_id)
        reset_target(destination, FRESH_PUBLIC)
    ring = res.keyring()
    workers = res.policy.export_workers
    if req.mode == "backup_id":
        result: dict[str, Any] = restore_backup(manifest, storage, ring, destination, workers=workers).as_dict()
        result["data_loss_minutes"] = _minutes_since(manifest.point.time)
    else:
        increments = [read_manifest(storage, b) for b in planned.get("incremental_backup_ids") or []]
        chain = ChainPlan(
            manifest,
            increments,
            req.until(),
            planned.get("last_captured_change"),
            str(planned.get("covered_until")),
        )
        result = restore_to_point(chain, storage, ring, destination, workers=workers)
        result["data_loss_minutes"] = _data_loss_minutes(chain)
    result["from_target"] = req.from_target
    result["target_conn_id"] = req.target_conn_id
    result["consistent_time"] = manifest.point.time
    log.info("Restore complete: %s", result)
    return result


# What the event says when the restore's last try ended without a word: its process was gone before it could.
DIED_UNREPORTED = "the restore's task process ended without reporting (killed, out of memory, or its node lost)"


def put_back(
    res: Resources, req: RestoreRequest, planned: dict[str, Any] | None, run: RunRef, *, event_id: int | None
) -> dict[str, Any]:
    """After the restore's last try failed: put the destination back as it was, when this run's restore left it
    half-loaded. A killed restore cannot clean up after itself and no retry is left to do it; this runs in a
    task process of its own. A destination not marked by this run's backup is left alone."""
    if req.is_dry_run:
        raise NothingToDo("Dry run: nothing was restored, so there is nothing to put back")
    if req.is_partial:
        raise NothingToDo(f"Scope {req.scope} restores in one transaction: a failure leaves nothing half-applied")
    backup_id = (planned or {}).get("backup_id")
    if not backup_id:
        raise NothingToDo("The plan did not finish: nothing was restored, so there is nothing to put back")
    done = put_back_interrupted(req.destination(res), str(backup_id))
    if done.put_back:
        log.warning("%s", done.message)
    else:
        log.info("%s", done.message)
    _record_put_back(try_catalog(res), event_id, done, str(backup_id), req, run)
    return done.as_dict()


def _record_put_back(
    cat: Catalog | None, event_id: int | None, done: PutBack, backup_id: str, req: RestoreRequest, run: RunRef
) -> None:
    """The event says what became of the destination; its error stays the restore's own when it gave one."""
    if cat is None or event_id is None:
        return
    event = cat.get_recovery_event(event_id)
    if event is None or event["status"] == "completed":
        return  # this run's restore finished after all (its task died reporting it): the row already says so
    cat.finish_recovery_event(
        event_id, status="failed", result={"put_back": done.as_dict()}, error=event["error"] or DIED_UNREPORTED
    )
    if done.put_back:
        cat.audit(
            "restore_put_back",
            actor=run.triggered_by or run.actor,
            backup_id=backup_id,
            details={"target_conn_id": req.target_conn_id, "message": done.message},
            key=f"restore_put_back:{run.dag_id}:{run.run_id}",
        )


def _data_loss_minutes(chain: ChainPlan) -> float | None:
    """Point in time: minutes between the chosen moment and the last captured change (what is left out).
    Latest: minutes since the last captured change (what no backup holds)."""
    last = chain.last_captured or chain.full.point.time
    if chain.until is None:
        return _minutes_since(last)
    if not last:
        return None
    return round(max(0.0, (datetime.fromisoformat(last) - chain.until).total_seconds() / 60), 1)


def _minutes_since(iso: str | None) -> float | None:
    if not iso:
        return None
    return round((datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds() / 60, 1)
