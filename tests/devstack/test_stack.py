"""The local stack as a newcomer meets it, against a real stack (`./scripts/run.sh` as a subprocess).

One stack (the session's ``local_stack``, on free ports in its own state directory), in this order:
1. the first start is green (no failed run in the first scheduler minute, exactly one full backup);
2. the README's restore example runs as written (CLI dry run, REST API dry run, real restore from GCS);
3. an invalid restore is refused by the api-server before a run exists;
4. kill -9 of the launcher, then a second start without port options comes up on the same ports with the
   same data; it runs on Celery (Redis + two workers with their own working directories, sharing only the
   primary target): its full backup and a restore both spread over the two workers, and the restore equals
   the source.
tests/faults/test_stack_task_kill.py (fault matrix row 6) shares the stack: it runs before step 4, which is
marked ``restarts_stack`` and so runs after every other test (tests/conftest.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from devstack.airflow_env import REPO, RESTORE_TARGET
from devstack.api import ApiError
from devstack.postgres import Cluster
from devstack.testing import StackProcess, alive, postmaster_running
from tests.fixtures.airflow import assert_same_database, fingerprint

pytestmark = pytest.mark.slow

SOURCE = "wedsync"


@pytest.fixture(scope="module")
def stack(local_stack: StackProcess) -> StackProcess:
    return local_stack


def _cluster(stack: StackProcess) -> Cluster:
    return Cluster(stack.state_dir / "pg", port=stack.ports["postgres"])


def _wait_all_finished(stack: StackProcess, dag_id: str, count: int, timeout: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            runs = stack.api.dag_runs(dag_id)
        except OSError:  # a busy api-server timed out: ask again
            continue
        if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        time.sleep(2)
    raise TimeoutError(f"{dag_id}: runs not finished: {stack.api.dag_runs(dag_id)}\n{stack.log_tail()}")


def _reset_restore_target(stack: StackProcess) -> None:
    c = _cluster(stack)
    c.create_database(RESTORE_TARGET, drop=True)


def test_first_start_is_green(stack: StackProcess) -> None:
    api = stack.api
    first = stack.ready["first_full_run"]
    assert api.wait_for_run("backup_daily_full", first)["state"] == "success", stack.log_tail()
    time.sleep(max(0.0, 70 - (time.monotonic() - stack.started_at)))
    runs = api.dag_runs()
    assert [r for r in runs if r["state"] == "failed"] == []
    # the stack's full backup took the slot the schedule had due: no second, scheduled full beside it (a slot that
    # comes due after the stack's full was triggered, 02:00 UTC for a test run at 01:59, is the schedule's own)
    fulls = [r for r in runs if r["dag_id"] == "backup_daily_full"]
    triggered = _moment(next(r for r in fulls if r["dag_run_id"] == first)["queued_at"])
    assert [
        r["dag_run_id"]
        for r in fulls
        if not (r["run_type"] == "scheduled" and _moment(r.get("run_after") or r["logical_date"]) > triggered)
    ] == [first]
    paused = {d["dag_id"]: d["is_paused"] for d in api.get("/api/v2/dags")["dags"]}
    assert {"backup_daily_full", "backup_hourly_incremental", "emergency_restore"} <= set(paused)
    assert not any(paused.values()), paused  # created paused, unpaused by the stack once the full was triggered
    for run in (r for r in runs if r["dag_id"] == "backup_hourly_incremental"):
        tis = {t["task_id"]: t for t in api.task_instances("backup_hourly_incremental", run["dag_run_id"])}
        if tis["preflight"]["state"] == "skipped":  # it ran before the first full backup existed
            assert tis["capture"]["state"] == "skipped"


def test_readme_restore_example_runs_as_written(stack: StackProcess) -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"Triggering it.*?```bash\n(.*?)```", readme, re.S).group(1)
    assert "restore_target" in block and 'eval "$(./scripts/run.sh env)"' in block
    script = block.replace("127.0.0.1:8080", f"127.0.0.1:{stack.ports['api']}")
    env = {k: v for k, v in stack.env().items() if not k.startswith(("AIRFLOW", "WEDSYNC_"))}
    env["WEDSYNC_STACK_DIR"] = str(stack.state_dir)  # where `./scripts/run.sh env` finds this stack
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = _wait_all_finished(stack, "emergency_restore", 3)
    assert [r["state"] for r in runs] == ["success"] * 3, runs
    assert_same_database(_cluster(stack), SOURCE, RESTORE_TARGET)


def test_invalid_restore_is_refused_before_a_run_exists(stack: StackProcess) -> None:
    before = len(stack.api.dag_runs("emergency_restore"))
    for conf, expected in (
        ({"dry_run": False, "confirm": "RESTORE other"}, "confirm must be exactly 'RESTORE restore_target'"),
        ({"mode": "point_in_time"}, "no target_time was given"),
        ({"mode": "backup_id"}, "no backup_id was given"),
        ({"reason": "x"}, "reason"),
    ):
        with pytest.raises(ApiError) as err:
            stack.api.trigger("emergency_restore", {"target_conn_id": RESTORE_TARGET, "reason": "INC-42", **conf})
        assert err.value.status in (400, 422) and expected in err.value.body, err.value.body
    assert len(stack.api.dag_runs("emergency_restore")) == before


@pytest.mark.restarts_stack  # last: tests/faults/test_stack_task_kill.py shares the stack on LocalExecutor
def test_restart_after_kill9_same_ports_same_data_then_celery(stack: StackProcess) -> None:
    state_before = json.loads((stack.state_dir / "state.json").read_text())["ports"]
    source_before = fingerprint(_cluster(stack).dsn(SOURCE))
    recorded = stack.kill9()
    # the watchdog is killed too, as by the OOM killer: PostgreSQL survives, the next start must stop it
    for r in recorded:
        if r.name == "pg-watchdog" and (p := r.process()):
            p.kill()
    assert postmaster_running(stack.state_dir)

    t = time.monotonic()
    stack.executor = "celery"
    ready = stack.start("--celery-workers", "2", "--celery-concurrency", "1", ports=False)
    print(f"restart on Celery took {time.monotonic() - t:.0f}s")
    assert not alive(recorded)
    assert json.loads((stack.state_dir / "state.json").read_text())["ports"] == state_before
    assert stack.api.healthy()
    assert fingerprint(_cluster(stack).dsn(SOURCE)) == source_before
    with psycopg.connect(_cluster(stack).dsn("backup_catalog")) as conn:
        kept = conn.execute("SELECT count(*) FROM backup_operations WHERE status = 'completed'").fetchone()[0]
    assert kept >= 1  # the backups of the first run are still known

    # The restart's full backup runs on the two Celery workers
    full = ready["first_full_run"]
    assert stack.api.wait_for_run("backup_daily_full", full)["state"] == "success", stack.log_tail()
    _assert_spread_over_workers(stack, "backup_daily_full", full)

    _reset_restore_target(stack)
    conf = {"target_conn_id": RESTORE_TARGET, "reason": "celery test", "dry_run": False}
    conf["confirm"] = f"RESTORE {RESTORE_TARGET}"
    run = stack.api.trigger("emergency_restore", conf)["dag_run_id"]
    assert stack.api.wait_for_run("emergency_restore", run)["state"] == "success", stack.log_tail()
    tis = stack.api.task_instances("emergency_restore", run)
    assert {t["task_id"]: t["state"] for t in tis}["put_back"] == "skipped"  # (never ran: no worker)
    hosts = {t["hostname"] for t in tis if t["state"] != "skipped"}
    assert hosts <= {f"worker{i}.{_fqdn()}" for i in (1, 2)}, hosts
    assert_same_database(_cluster(stack), SOURCE, RESTORE_TARGET)


def _fqdn() -> str:
    import socket

    return socket.getfqdn()


def _moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _assert_spread_over_workers(stack: StackProcess, dag_id: str, run_id: str) -> None:
    tis = stack.api.task_instances(dag_id, run_id)
    ran = [t for t in tis if t["state"] == "success" and t["hostname"]]  # an EmptyOperator has no worker
    hosts = {t["hostname"] for t in ran}
    print(json.dumps([(t["task_id"], t.get("map_index"), t["hostname"], t["pid"], t["queue"]) for t in ran]))
    # backup_daily_full has one task process now (backup): it ran on one of the two Celery workers
    assert hosts and hosts <= {f"worker{i}.{_fqdn()}" for i in (1, 2)}, hosts
    workdirs = {Path(stack.state_dir / "workers" / f"worker{i}") for i in (1, 2)}
    assert all(d.is_dir() for d in workdirs)
