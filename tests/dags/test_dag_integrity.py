"""DAG integrity: the DAG folder parses cleanly, fast, offline, and the DAGs keep their promised shape.

No stack needed: these read the parsed DAG objects only. Timing and offline checks run in a fresh
subprocess so module caching in this process cannot make them look better than they are.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import TriggerRule
from airflow.sdk.exceptions import ParamValidationError
from wedsync_backup.policy import load_policy

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
# A ceiling that catches a DAG file doing real work at parse time (a query, a network call, a heavy import),
# not a benchmark: nine DAG files parse in about 0.5 s on a quiet machine, several times that on a busy one.
PARSE_BUDGET_SECONDS = 5.0
# Issue 10: the DAGs that prove backups over time.
NEW_DAGS = {"backup_rpo_watchdog", "restore_drill", "backup_scrub", "rotate_keys", "backup_weekly_archive"}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__DATABASE"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO)])
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env.update(extra)
    return env


def _run_probe(code: str, **env: str) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=_subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


CORE_DAGS = ("backup_daily_full", "backup_hourly_incremental", "emergency_restore")


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) >= {*CORE_DAGS, "catalog_rebuild", *NEW_DAGS}


def test_schedules_and_concurrency(dagbag: DagBag) -> None:
    backup, restore = dagbag.dags["backup_daily_full"], dagbag.dags["emergency_restore"]
    hourly = dagbag.dags["backup_hourly_incremental"]
    assert backup.schedule == "0 2 * * *"
    assert hourly.schedule == "15 * * * *"
    assert restore.schedule is None
    assert not restore.timetable.can_be_scheduled
    for dag in (backup, hourly, restore):
        assert dag.max_active_runs == 1
        assert "wedsync" in dag.tags
        assert dag.catchup is False


@pytest.mark.parametrize("dag_id", ["backup_daily_full", "backup_hourly_incremental"])
def test_backup_tasks_retry_with_exponential_backoff(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.default_args["retries"] >= 2
    assert dag.default_args["retry_exponential_backoff"]
    for task in dag.tasks:
        if task.task_id in ("mark_failed", "chain_ended", "trigger_full_backup"):
            continue  # bookkeeping after a failure: retrying it would only repeat the same write
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id


def test_restore_puts_back_only_after_its_last_try_failed(dagbag: DagBag) -> None:
    """put_back waits for restore to be done for good (a try that will be retried is not failed) and runs only when
    it failed; restore_files, the other leaf, is then upstream_failed, so the run still ends failed."""
    dag = dagbag.dags["emergency_restore"]
    assert set(dag.task_ids) == {"plan", "restore", "restore_files", "put_back"}
    put_back, files = dag.get_task("put_back"), dag.get_task("restore_files")
    assert put_back.trigger_rule == TriggerRule.ONE_FAILED
    assert put_back.upstream_task_ids == {"restore"} and not put_back.downstream_task_ids
    assert type(put_back).__name__ == "PutBackOperator"
    assert files.trigger_rule == TriggerRule.NONE_FAILED and files.upstream_task_ids == {"restore"}
    assert {t.task_id for t in dag.leaves} == {"restore_files", "put_back"}
    # pulled by template: when plan failed there is no XCom, and put_back skips instead of failing on it
    assert "xcom_pull(task_ids='plan'" in put_back.plan and "key='event_id'" in put_back.event_id


def _restore_params(dagbag: DagBag, **values: Any) -> Any:
    params = copy.deepcopy(dagbag.dags["emergency_restore"].params)
    for k, v in values.items():
        params[k] = v
    return params


GOOD = {"target_conn_id": "restore_target", "reason": "drill"}


def test_restore_params_accept_good_values_and_default_to_dry_run(dagbag: DagBag) -> None:
    resolved = _restore_params(dagbag, **GOOD).validate()
    assert resolved["dry_run"] is True
    assert resolved["mode"] == "latest"
    assert resolved["from_target"] == "primary"


def test_restore_and_rebuild_offer_the_policys_targets(dagbag: DagBag) -> None:
    names = [t.name for t in load_policy().targets]
    for dag_id in ("emergency_restore", "catalog_rebuild"):
        schema = dagbag.dags[dag_id].params.get_param("from_target").schema
        assert schema["enum"] == names, dag_id


@pytest.mark.parametrize(
    "bad",
    [
        {"from_target": "tape"},
        {"mode": "yesterday"},
        {"scope": "partial"},
        {"target_conn_id": ""},
        {"target_conn_id": "bad id; DROP"},
        {"backup_id": "../etc"},
        {"dry_run": "maybe"},
        {"reason": "x"},
        {"reason": "   "},
        {"confirm": "yes"},
        {"target_time": "yesterday"},
        {"target_time": "2026-11-21 14:30"},
    ],
)
def test_restore_params_refuse_bad_values(dagbag: DagBag, bad: dict[str, Any]) -> None:
    with pytest.raises(ParamValidationError, match=next(iter(bad))):
        _restore_params(dagbag, **{**GOOD, **bad}).validate()


def test_restore_params_require_target_conn_id(dagbag: DagBag) -> None:
    with pytest.raises(ParamValidationError, match="target_conn_id"):
        _restore_params(dagbag, reason="drill").validate()


def _operator_classes(dagbag: DagBag) -> set[type]:
    out: set[type] = set()
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            cls = getattr(task, "operator_class", None)
            out.add(cls if isinstance(cls, type) else type(task))
    return out


def test_operators_have_template_fields_and_keyword_only_args(dagbag: DagBag) -> None:
    classes = _operator_classes(dagbag)
    assert len(classes) >= 8, classes
    for cls in classes:
        if cls.__module__.startswith("airflow.providers.standard."):
            continue  # ShortCircuitOperator / TriggerDagRunOperator: Airflow's own
        assert cls.__module__.startswith("wedsync_airflow."), cls
        assert cls.template_fields, cls
        assert "policy_path" in cls.template_fields, cls
        for name in cls.template_fields:
            assert isinstance(name, str), (cls, name)
        for klass in cls.__mro__:
            if not klass.__module__.startswith("wedsync_airflow.") or "__init__" not in vars(klass):
                continue
            params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
            positional = [
                p.name for p in params if p.kind not in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
            ]
            assert not positional, f"{klass.__name__}.__init__ takes {positional} positionally"


PARSE_PROBE = """
import json, time
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
t = time.perf_counter()
bag = DagBag(dag_folder={dags!r})
elapsed = time.perf_counter() - t
print(json.dumps({{"seconds": elapsed, "errors": {{str(k): v for k, v in bag.import_errors.items()}},
                  "dags": sorted(bag.dag_ids)}}))
"""


def test_dag_folder_parses_cheaply() -> None:
    out = _run_probe(PARSE_PROBE.format(dags=str(DAGS)))
    assert out["errors"] == {}
    assert set(out["dags"]) >= {*CORE_DAGS, "catalog_rebuild", *NEW_DAGS}
    assert out["seconds"] < PARSE_BUDGET_SECONDS, f"DAG folder took {out['seconds']:.2f}s to parse"


OFFLINE_PROBE = """
import json, socket
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
attempts = []
def refuse(self, address, *a, **k):
    attempts.append(repr(address))
    raise OSError("network access while parsing DAG files: " + repr(address))
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
bag = DagBag(dag_folder={dags!r})
print(json.dumps({{"errors": {{str(k): v for k, v in bag.import_errors.items()}},
                  "dags": sorted(bag.dag_ids), "attempts": attempts}}))
"""


def test_dag_files_touch_no_database_or_network_at_import(tmp_path: Path) -> None:
    out = _run_probe(
        OFFLINE_PROBE.format(dags=str(DAGS)),
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://nobody:nothing@127.0.0.1:9/no_such_db",
        WEDSYNC_BACKUP_S3_BUCKET="",
        WEDSYNC_BACKUP_GCS_BUCKET="",
    )
    assert out["errors"] == {}
    assert set(out["dags"]) >= {*CORE_DAGS, "catalog_rebuild", *NEW_DAGS}
    assert out["attempts"] == []
