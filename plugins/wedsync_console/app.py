"""The backup console's FastAPI app, mounted by the plugin at /wedsync-backup in Airflow's api-server.

Pages: ``/`` (the dashboard, a plain ES module). API: ``/api/status``, ``/api/history``,
``/api/recovery-points`` (GET, POST), ``/api/backups`` (POST), ``/api/restores`` (POST) and
``/api/restores/{run_id}``. Reads need read access to the backup DAGs; every POST needs the Admin role,
is validated before anything happens, rate-limited where it starts work, and audited whatever its outcome.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import psycopg
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from psycopg.rows import dict_row
from starlette.concurrency import run_in_threadpool
from wedsync_backup.errors import ConfigError, WedSyncError
from wedsync_backup.named_points import mark_named_point, source_position
from wedsync_backup.policy import load_policy

from wedsync_console import audit, queries, runs, validation
from wedsync_console.auth import ReaderDep, check_admin, is_admin, same_origin, user_name, user_roles
from wedsync_console.errors import ConsoleError, FieldErrors, Forbidden, RateLimited, Unauthenticated
from wedsync_console.tiers import RESTORE_DAG, TIERS, WATCHED_DAGS, WEDDING_NOW_DAG, tier_status

STATIC = Path(__file__).resolve().parent / "static"
BACKUPS_PER_HOUR = 5
RESTORES_PER_HOUR = 3
READONLY_CONN_ID = "backup_catalog_readonly"
BACKUP_DAGS = {"full": "backup_daily_full", "manual": "backup_daily_full", "incremental": "backup_hourly_incremental"}


# --- the catalog -------------------------------------------------------------------------------------------
def catalog_dsn(*, readonly: bool = False) -> str:
    """Reads go through the read-only role's connection when it is defined; writes through backup_catalog."""
    from wedsync_airflow.connections import pg_target

    policy = load_policy()
    if readonly:
        try:
            return pg_target(READONLY_CONN_ID, "catalog (read-only)").conninfo()
        except WedSyncError:
            pass
    return pg_target(policy.catalog_conn_id, "catalog").conninfo()


def read(fn: Callable[[queries.Conn], Any]) -> Any:
    try:
        with psycopg.connect(catalog_dsn(readonly=True), row_factory=dict_row, application_name="wedsync_console") as c:
            return fn(c)
    except psycopg.OperationalError as e:
        raise HTTPException(
            503, f"The backup catalog cannot be reached ({str(e).strip()[:200]}): check the backup_catalog connection"
        ) from e


# --- reads ---------------------------------------------------------------------------------------------------
def status() -> dict[str, Any]:
    now = datetime.now(UTC)
    dags = runs.last_runs(WATCHED_DAGS)

    def from_catalog(conn: queries.Conn) -> dict[str, Any]:
        return {
            "points": {t.name: queries.newest_point(conn, t.backup_types) for t in TIERS},
            "targets": queries.targets(conn),
            "rule_321": queries.latest_rule_321(conn),
            "drills": queries.drills(conn, limit=1),
            "in_progress": queries.running(conn),
            "success_rate": queries.success_rate(conn, now - timedelta(days=30)),
        }

    cat = read(from_catalog)
    for t in cat["targets"]:
        t["healthy"] = bool(t["newest_verified"])
        t["health_text"] = "newest copy verified" if t["healthy"] else f"newest copy NOT verified: {t['newest_error']}"
    return {
        "generated_at": now,
        "tiers": [tier_status(t, cat["points"][t.name], dags.get(t.dag_id), now) for t in TIERS],
        "targets": cat["targets"],
        "rule_321": cat["rule_321"],
        "last_drill": cat["drills"][0] if cat["drills"] else None,
        "success_rate_30d": cat["success_rate"],
        "in_progress": cat["in_progress"],
        "active_runs": runs.active_runs(WATCHED_DAGS),
        "restore_dag_deployed": RESTORE_DAG in dags,
    }


def recovery_points(days: int, wedding_id: str | None) -> dict[str, Any]:
    since = datetime.now(UTC) - timedelta(days=days)

    def from_catalog(conn: queries.Conn) -> dict[str, Any]:
        out = queries.chains(conn, since)
        out["named"] = queries.named_points(conn, since)
        out["drills"] = queries.drills(conn, limit=100, since=since)
        out["restores"] = queries.restores(conn, since=since)
        if wedding_id:
            out["wedding"] = queries.wedding(conn, wedding_id)
        return out

    result = read(from_catalog)
    result.update(since=since, until=datetime.now(UTC), days=days)
    return result


# --- actions --------------------------------------------------------------------------------------------------
def estimate_seconds(dag_id: str, backup_type: str) -> float | None:
    """The median of the last runs' durations (the DAG's, else the catalog's backups of this type)."""
    durations = runs.recent_durations(dag_id)
    if not durations:
        rows = read(
            lambda c: c.execute(
                "SELECT extract(epoch FROM completed_at - started_at) AS s FROM backup_operations"
                " WHERE status = 'completed' AND backup_type = %s ORDER BY completed_at DESC LIMIT 5",
                (backup_type,),
            ).fetchall()
        )
        durations = [float(r["s"]) for r in rows if r["s"] is not None]
    return round(statistics.median(durations)) if durations else None


def start_backup(req: dict[str, Any], user: str) -> dict[str, Any]:
    kind = req["type"]
    if kind == "wedding":
        dag_id = WEDDING_NOW_DAG
        conf = {"wedding_ids": req["weddingIds"], "reason": req["reason"]}
        errors = runs.param_errors(dag_id, conf)
        if errors:
            raise FieldErrors(errors)
    else:
        dag_id = BACKUP_DAGS[kind]
        conf = {"reason": req["reason"], "priority_level": req["priorityLevel"], "requested_by": user}
        if kind in ("full", "manual"):  # recorded as this type, with the reason, in the catalog
            conf["backup_type"] = kind
    run = runs.trigger(dag_id, conf, user=user, note=f"{kind} backup from the console: {req['reason']}")
    backup_type = kind
    backup_id = None
    if kind != "wedding":
        from wedsync_backup.backup_id import make_backup_id

        backup_id = make_backup_id(backup_type, f"{dag_id}|{run['run_id']}", run["run_after"])
    points = {
        "full": ["a full recovery point at the backup's snapshot, starting a new point-in-time chain"],
        "manual": ["a full recovery point at the backup's snapshot, starting a new point-in-time chain"],
        "incremental": ["an incremental recovery point extending the current chain to the moment of capture"],
        "wedding": [f"a wedding recovery point for each of {', '.join(req['weddingIds'])}"],
    }[kind]
    return {
        "backup_id": backup_id,
        "dag_id": dag_id,
        "run_id": run["run_id"],
        "state": run["state"],
        "estimated_duration_seconds": estimate_seconds(dag_id, backup_type),
        "scheduled_components": validation.components_of(kind, files_enabled=load_policy().files.enabled),
        "priority_level": req["priorityLevel"],
        "recovery_points": points,
        "warning": f"{dag_id} is paused: the run waits until it is unpaused" if run["dag_paused"] else None,
    }


def start_restore(conf: dict[str, Any], user: str) -> dict[str, Any]:
    run = runs.trigger(RESTORE_DAG, conf, user=user, note=f"restore from the console: {conf.get('reason')}")
    return {
        "dag_id": RESTORE_DAG,
        "run_id": run["run_id"],
        "state": run["state"],
        "dry_run": conf.get("dry_run", True) is not False,
        "warning": f"{RESTORE_DAG} is paused: the run waits until it is unpaused" if run["dag_paused"] else None,
    }


def restore_state(run_id: str) -> dict[str, Any]:
    state = runs.run_state(RESTORE_DAG, run_id)
    if state is None:
        raise HTTPException(404, f"No {RESTORE_DAG} run '{run_id}'")
    event = read(lambda c: queries.restore_event(c, RESTORE_DAG, run_id))
    state["event"] = event
    state["plan"] = (event or {}).get("result") if (event or {}).get("dry_run") else (event or {}).get("plan")
    return state


def mark_point(label: str, user: str) -> dict[str, Any]:
    from wedsync_airflow.connections import pg_target

    policy = load_policy()
    at, lsn = source_position(pg_target(policy.source_conn_id, "source").conninfo())
    try:
        return mark_named_point(catalog_dsn(), label, at=at, lsn=lsn, created_by=user)
    except ConfigError as e:
        raise FieldErrors({"label": str(e)}) from e


# --- the POST pipeline: who, whether allowed, valid, within the limit, then act; audited at every exit --------
async def _user(request: Request) -> BaseUser:
    try:
        credentials = await bearer_scheme(request)
        return await get_user(request, None, credentials)
    except HTTPException as e:
        raise Unauthenticated(f"Log in to Airflow first ({e.detail}): use the UI's session or a bearer token") from e


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as e:
        raise FieldErrors({"body": f"not valid JSON ({e})"}) from e
    if not isinstance(body, dict):
        raise FieldErrors({"body": "must be a JSON object"})
    return body


async def act(
    request: Request,
    action: str,
    validate: Callable[[dict[str, Any]], Any],
    perform: Callable[[Any, str], dict[str, Any]],
    *,
    dag_id: str | None = None,
    limit: int | None = None,
    status_code: int = 202,
) -> JSONResponse:
    client = request.client.host if request.client else None
    actor, params, reservation = "anonymous", {}, None
    dsn = await run_in_threadpool(catalog_dsn)

    async def log(outcome: str, code: int, message: str | None, **extra: Any) -> None:
        await run_in_threadpool(
            audit.write,
            dsn,
            actor=actor,
            action=action,
            client=client,
            params=params,
            outcome=outcome,
            status_code=code,
            message=message,
            backup_id=extra.pop("backup_id", None),
            extra={**extra, **({"reservation": str(reservation)} if reservation else {})},
        )

    try:
        body_error = None
        try:
            params = await _body(request)
        except FieldErrors as e:
            body_error = e
        user = await _user(request)
        actor = user_name(user)
        why_not = (None if request.headers.get("authorization") else same_origin(request)) or check_admin(user, dag_id)
        if why_not:
            raise Forbidden(why_not)
        if body_error:
            raise body_error
        valid = await run_in_threadpool(validate, params)
        if limit is not None:
            got = await run_in_threadpool(
                audit.reserve, dsn, actor=actor, action=action, limit=limit, client=client, params=params
            )
            if isinstance(got, audit.Refusal):
                raise RateLimited(got.message(action), headers={"Retry-After": str(got.retry_after)})
            reservation = got
        result = await run_in_threadpool(perform, valid, actor)
    except ConsoleError as e:
        outcome = {401: "unauthenticated", 403: "forbidden", 422: "invalid", 429: "rate_limited"}.get(
            e.status_code, "failed"
        )
        await log(outcome, e.status_code, e.message, **({"errors": e.fields} if isinstance(e, FieldErrors) else {}))
        return JSONResponse(e.body(), status_code=e.status_code, headers=e.headers)
    except WedSyncError as e:
        await log("failed", 422, str(e))
        return JSONResponse({"detail": str(e)}, status_code=422)
    except Exception as e:
        await log("failed", 500, f"{type(e).__name__}: {e}")
        raise
    await log(
        "accepted" if reservation is None else "triggered",
        status_code,
        None,
        backup_id=result.get("backup_id"),
        run_id=result.get("run_id"),
    )
    return JSONResponse(jsonable_encoder(result), status_code=status_code)


# --- the app --------------------------------------------------------------------------------------------------
def create_app() -> FastAPI:
    app = FastAPI(
        title="WedSync Backup console",
        description="Backups, recovery points and restores of the WedSync platform. Reads need read access to "
        "the backup DAGs; actions need the Admin role.",
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/me")
    def me(user: ReaderDep) -> dict[str, Any]:
        return {"user": user_name(user), "roles": user_roles(user), "can_act": is_admin(user)}

    @app.get("/api/status")
    def get_status(user: ReaderDep) -> JSONResponse:
        return JSONResponse(jsonable_encoder(status()))

    @app.get("/api/history")
    def get_history(
        user: ReaderDep,
        type: Annotated[str | None, Query(description="full, incremental, archive, manual or wedding")] = None,
        status: Annotated[str | None, Query(description="pending, in_progress, completed or failed")] = None,
        since: Annotated[datetime | None, Query(description="started at or after (ISO 8601)")] = None,
        until: Annotated[datetime | None, Query(description="started at or before (ISO 8601)")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> JSONResponse:
        errors = {}
        if type is not None and type not in queries.BACKUP_TYPES:
            errors["type"] = f"must be one of {', '.join(queries.BACKUP_TYPES)}"
        if status is not None and status not in queries.STATUSES:
            errors["status"] = f"must be one of {', '.join(queries.STATUSES)}"
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                errors[name] = "needs a time zone, e.g. 2026-11-21T14:30:00Z"
        if errors:
            return JSONResponse(FieldErrors(errors).body(), status_code=422)
        page = read(
            lambda c: queries.history(
                c, backup_type=type, status=status, since=since, until=until, limit=limit, offset=offset
            )
        )
        return JSONResponse(jsonable_encoder(page))

    @app.get("/api/recovery-points")
    def get_recovery_points(
        user: ReaderDep,
        days: Annotated[int, Query(ge=1, le=400)] = 30,
        wedding_id: Annotated[str | None, Query(pattern=validation.WEDDING_ID.pattern)] = None,
    ) -> JSONResponse:
        return JSONResponse(jsonable_encoder(recovery_points(days, wedding_id)))

    @app.post("/api/recovery-points", status_code=201)
    async def post_recovery_point(request: Request) -> JSONResponse:
        return await act(request, "recovery_point", validation.label, mark_point, status_code=201)

    @app.post("/api/backups", status_code=202)
    async def post_backup(request: Request) -> JSONResponse:
        return await act(
            request, "backup", validation.backup_request, start_backup, limit=BACKUPS_PER_HOUR, dag_id=None
        )

    @app.post("/api/restores", status_code=202)
    async def post_restore(request: Request) -> JSONResponse:
        return await act(
            request,
            "restore",
            lambda body: validation.restore_conf(RESTORE_DAG, body),
            start_restore,
            limit=RESTORES_PER_HOUR,
            dag_id=RESTORE_DAG,
        )

    @app.get("/api/restores/{run_id}")
    def get_restore(run_id: str, user: ReaderDep) -> JSONResponse:
        return JSONResponse(jsonable_encoder(restore_state(run_id)))

    return app
