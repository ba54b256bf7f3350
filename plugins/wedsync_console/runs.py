"""DAG runs from inside the api-server, the way Airflow's own REST API makes them (``trigger_dag_run``).

The run is created from the DAG's latest serialized version with ``create_dagrun``: its Params are the
DAG's own, so a conf is validated by exactly the schema the DAG declares, and the run records the
triggering user.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.models import DagModel, DagRun
from airflow.models.dagbag import DBDagBag
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState
from airflow.utils.types import DagRunTriggeredByType, DagRunType
from sqlalchemy import select

from wedsync_console.errors import FieldErrors, NotDeployed

_dag_bag = DBDagBag(load_op_links=False)


def _serialized(dag_id: str, session: Any) -> Any:
    dm = session.scalar(select(DagModel).where(DagModel.dag_id == dag_id, ~DagModel.is_stale))
    dag = _dag_bag.get_latest_version_of_dag(dag_id, session=session) if dm else None
    if dag is None:
        raise NotDeployed(dag_id)
    return dm, dag


def deployed(dag_id: str) -> bool:
    with create_session() as session:
        try:
            _serialized(dag_id, session)
        except NotDeployed:
            return False
    return True


def param_errors(dag_id: str, conf: dict[str, Any]) -> dict[str, str]:
    """One message per field that the DAG's own Params refuse (unknown fields too)."""
    with create_session() as session:
        _, dag = _serialized(dag_id, session)
        errors = {k: f"unknown parameter of {dag_id}" for k in conf if k not in dag.params}
        merged = dag.params.deep_merge({k: v for k, v in conf.items() if k in dag.params})
        for key, param in merged.items():
            try:
                param.resolve(raises=True)
            except Exception as e:  # jsonschema.ValidationError, or "No value passed"
                errors[key] = str(getattr(e, "message", e))
    return errors


def resolved_params(dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """The values a run with ``conf`` would see: the DAG's defaults overlaid with ``conf``."""
    with create_session() as session:
        _, dag = _serialized(dag_id, session)
        return {k: p.resolve() for k, p in dag.params.deep_merge(conf).items()}


def trigger(dag_id: str, conf: dict[str, Any], *, user: str, note: str | None = None) -> dict[str, Any]:
    """Queue a manual run of ``dag_id`` as ``user``; invalid params raise FieldErrors (nothing created)."""
    from airflow.exceptions import ParamValidationError

    with create_session() as session:
        dm, dag = _serialized(dag_id, session)
        run_after = datetime.now(UTC)
        run_id = dag.timetable.generate_run_id(run_type=DagRunType.MANUAL, run_after=run_after, data_interval=None)
        try:
            run = dag.create_dagrun(
                run_id=run_id,
                logical_date=None,
                data_interval=None,
                run_after=run_after,
                conf=conf,
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.REST_API,
                triggering_user_name=user,
                state=DagRunState.QUEUED,
                note=note,
                session=session,
            )
        except ParamValidationError as e:
            raise FieldErrors({"conf": str(e)}) from e
        return {
            "dag_id": dag_id,
            "run_id": run.run_id,
            "run_after": run_after,
            "state": str(run.state),
            "dag_paused": bool(dm.is_paused),
        }


def run_state(dag_id: str, run_id: str) -> dict[str, Any] | None:
    """A run's state, its tasks' states, and its stage (the task running now)."""
    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            return None
        tis = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state, TaskInstance.start_date)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
            .order_by(TaskInstance.start_date.nulls_last(), TaskInstance.task_id)
        ).all()
        return describe_run(run, tis)


def describe_run(run: Any, tis: list[Any]) -> dict[str, Any]:
    tasks: dict[str, list[str]] = {}
    for ti in tis:
        tasks.setdefault(ti.task_id, []).append(str(ti.state) if ti.state else "none")
    running = [t for t, states in tasks.items() if "running" in states]
    done = [t for t, states in tasks.items() if all(s in ("success", "skipped") for s in states)]
    started = run.start_date
    end = run.end_date or datetime.now(UTC)
    return {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "state": str(run.state),
        "triggered_by": run.triggering_user_name,
        "queued_at": run.queued_at,
        "start_date": started,
        "end_date": run.end_date,
        "elapsed_seconds": round((end - started).total_seconds()) if started else 0,
        "stage": ", ".join(running) if running else ("waiting for a worker" if str(run.state) != "success" else "done"),
        "tasks_done": len(done),
        "tasks_total": len(tasks),
        "tasks": {t: states[0] if len(states) == 1 else states for t, states in tasks.items()},
    }


def active_runs(dag_ids: tuple[str, ...]) -> list[dict[str, Any]]:
    """Queued and running runs of these DAGs, with their stage and elapsed time."""
    with create_session() as session:
        runs = session.scalars(
            select(DagRun)
            .where(DagRun.dag_id.in_(dag_ids), DagRun.state.in_([DagRunState.QUEUED, DagRunState.RUNNING]))
            .order_by(DagRun.run_after.desc())
            .limit(20)
        ).all()
        out = []
        for run in runs:
            tis = session.execute(
                select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state, TaskInstance.start_date).where(
                    TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
                )
            ).all()
            out.append(describe_run(run, tis))
        return out


def last_runs(dag_ids: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per DAG: the newest run's state and times, the next scheduled run, and whether it is paused."""
    out: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        for dag_id in dag_ids:
            dm = session.scalar(select(DagModel).where(DagModel.dag_id == dag_id, ~DagModel.is_stale))
            if dm is None:
                continue
            run = session.scalar(
                select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc()).limit(1)
            )
            out[dag_id] = {
                "paused": bool(dm.is_paused),
                "next_run": dm.next_dagrun_create_after,
                "last_run": None
                if run is None
                else {
                    "run_id": run.run_id,
                    "state": str(run.state),
                    "start_date": run.start_date,
                    "end_date": run.end_date,
                },
            }
    return out


def recent_durations(dag_id: str, limit: int = 5) -> list[float]:
    """Seconds taken by the newest successful runs of ``dag_id``."""
    with create_session() as session:
        rows = session.execute(
            select(DagRun.start_date, DagRun.end_date)
            .where(DagRun.dag_id == dag_id, DagRun.state == DagRunState.SUCCESS, DagRun.start_date.is_not(None))
            .order_by(DagRun.end_date.desc())
            .limit(limit)
        ).all()
    return [(e - s).total_seconds() for s, e in rows if s and e]
