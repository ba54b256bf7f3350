"""Fault matrix row 6 under the real scheduler: SIGKILL of the Airflow task process mid-export and mid-restore.

Row 6: "The task process killed with SIGKILL in the middle of the export, and in the middle of a restore (a real
task process, not an in-process test run): the retry completes; no orphan session on the source, and the restore
target is as it was before the retry." tests/faults/test_processes.py kills a process of its own running one core
command; here the local stack (the session's ``local_stack``, LocalExecutor) runs the DAGs and the test kills the
process Airflow runs the task in.

Which process: the scheduler's LocalExecutor worker (``airflow worker -- LocalExecutor: <ti id>``) runs the Task
SDK's supervisor, which forks the task runner (``airflow worker -- <ti id>``, its own process group). The runner
parses the DAG file and runs the operator's ``execute``: it owns the psycopg sessions and is the parent of
pg_dump/pg_restore, and it is the pid Airflow records on the task instance. The supervisor only relays logs,
heartbeats and the final state to the api-server; killing it would be the loss of a worker, another fault. So the
runner is killed, and the supervisor, seeing it die, reports the attempt failed and Airflow retries it.

The demo database is exported, and restored, in about a second, so the test holds each in the middle for as
long as it needs. The export: once its snapshot is taken (its replication slot created), the stack's S3 server is
stopped (SIGSTOP): the S3 writer waits for an answer and the export with it, pg_dump still running, its output
unread. The restore: once it has created the tables, the test locks one that nobody holds (NOWAIT): the COPY into
it, or the indexes built on it, wait there. The kill then strikes work that is certainly under way.

A killed restore cannot clean up: what it committed stays in the target, under its mark (a schema that says which
backup it was loading), and nothing moves any more. The retry knows the target was empty when the run's plan
checked it, puts it back to empty first, then restores it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import psycopg
import pytest
from wedsync_backup.logical.slot import slot_name_for
from wedsync_backup.restore import RESTORE_MARK

from devstack.airflow_env import RESTORE_TARGET
from devstack.postgres import Cluster
from devstack.testing import StackProcess
from tests.faults.helpers import wait_for
from tests.fixtures.airflow import assert_same_database

pytestmark = pytest.mark.slow

SOURCE = "wedsync"
LOCKER = "row6-locker"  # the application_name of the test's own sessions
TOOLS = ("pg_dump", "pg_restore", "psql")
TABLES = (
    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
)


@pytest.fixture(scope="module")
def stack(local_stack: StackProcess) -> StackProcess:
    assert local_stack.executor == "local", "row 6 kills a LocalExecutor task process (see tests/conftest.py)"
    return local_stack


def _cluster(stack: StackProcess) -> Cluster:
    return Cluster(stack.state_dir / "pg", port=stack.ports["postgres"])


def _idle(stack: StackProcess, timeout: float = 300) -> None:
    """Wait until no DAG run is queued or running (the stack's first runs): S3 is stopped for ours alone."""
    started = time.monotonic()
    while time.monotonic() < started + timeout:
        with contextlib.suppress(OSError):
            if not [r for r in stack.api.dag_runs() if r["state"] in ("queued", "running")]:
                print(f"waited {time.monotonic() - started:.0f}s for the stack's runs to end")
                return
        time.sleep(2)
    raise TimeoutError(f"runs still active after {timeout:.0f}s: {stack.api.dag_runs()}")


def _task(stack: StackProcess, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    (ti,) = [t for t in stack.api.task_instances(dag_id, run_id) if t["task_id"] == task_id]
    return ti


def _title(p: psutil.Process) -> str:
    """A process's title as ps shows it (Airflow sets its workers' titles over their command lines)."""
    return " ".join(p.cmdline()).strip()


def _running_task_process(stack: StackProcess, dag_id: str, run_id: str, task_id: str) -> psutil.Process:
    """The task runner of a running task instance, checked against the process tree (see the docstring)."""
    ti = wait_for(
        lambda: (t := _task(stack, dag_id, run_id, task_id))["state"] == "running" and t["pid"] and t,
        120,
        f"{dag_id}.{task_id} to run",
    )
    runner = psutil.Process(ti["pid"])
    supervisor = runner.parent()
    # forked from the supervisor, the runner carries its title until it sets its own
    wait_for(lambda: _title(runner) == f"airflow worker -- {ti['id']}", 10, f"the runner's title: {_title(runner)}")
    assert _title(supervisor).startswith("airflow worker -- LocalExecutor: "), _title(supervisor)
    (scheduler,) = [r.pid for r in stack.recorded() if r.name == "scheduler"]
    assert supervisor.ppid() == scheduler  # this stack's scheduler (the titles hide the environment)
    return runner


def _tools(runner: psutil.Process) -> list[psutil.Process]:
    """The pg_dump/pg_restore/psql processes the task runner started."""
    return [c for c in runner.children(recursive=True) if c.name() in TOOLS]


def _running(procs: list[psutil.Process]) -> list[str]:
    """Which of ``procs`` still run (orphans reparented elsewhere included)."""
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.name()} (pid {p.pid})")
    return alive


def _sessions(stack: StackProcess, dbname: str) -> list[tuple[Any, ...]]:
    """Client sessions (and walsenders) on ``dbname`` other than the test's own."""
    with psycopg.connect(_cluster(stack).dsn(), autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, state, wait_event_type, left(query, 60) FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type IN ('client backend', 'walsender') AND application_name <> %s "
            "AND pid <> pg_backend_pid()",
            (dbname, LOCKER),
        ).fetchall()


def _holders(stack: StackProcess) -> list[tuple[Any, ...]]:
    """Sessions on the source inside a transaction (a snapshot or a slot's): other DAGs' short queries aside,
    what a killed or finished export could leave behind."""
    return [s for s in _sessions(stack, SOURCE) if s[1].startswith("idle in transaction")]


def _waiting_on_lock(stack: StackProcess, dbname: str) -> list[tuple[Any, ...]]:
    return [s for s in _sessions(stack, dbname) if s[2] == "Lock"]


@contextlib.contextmanager
def _paused(stack: StackProcess, name: str) -> Iterator[None]:
    """The stack's process ``name`` stopped (SIGSTOP) for the duration, then continued."""
    (proc,) = [p for r in stack.recorded() if r.name == name and (p := r.process()) is not None]
    proc.suspend()
    try:
        yield
    finally:
        proc.resume()


def _export_stage(stack: StackProcess, tools: list[psutil.Process]) -> str:
    """Where the export waits on S3: pg_dump still running (its output unread), COPY workers in the snapshot,
    or the schema's object (pg_dump done, no COPY yet)."""
    if tools:
        return ", ".join(t.name() for t in tools) + " running"
    return "COPY" if any(s[3].startswith("COPY") for s in _sessions(stack, SOURCE)) else "writing the schema"


def _snapshot_exported(stack: StackProcess, slot: str) -> bool:
    """The export's slot is created and its snapshot exported: from here the export reads tables."""
    return any(
        s[1] == "idle in transaction" and f"CREATE_REPLICATION_SLOT {slot}" in s[3] for s in _sessions(stack, SOURCE)
    )


def _kill(runner: psutil.Process) -> None:
    runner.send_signal(signal.SIGKILL)
    runner.wait(10)


def _tries(stack: StackProcess, dag_id: str, run_id: str, task_id: str) -> list[tuple[int, str, int]]:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries"
    return [(t["try_number"], t["state"], t["pid"]) for t in stack.api.get(path)["task_instances"]]


def _wait_up_for_retry(stack: StackProcess, dag_id: str, run_id: str, task_id: str) -> None:
    """The killed attempt is over: Airflow has the task waiting for its retry (the stack's retry delay is 30 s)."""
    wait_for(lambda: _task(stack, dag_id, run_id, task_id)["state"] == "up_for_retry", 20, f"{task_id} up for retry")


def _finished(stack: StackProcess, dag_id: str, run_id: str) -> dict[str, Any]:
    return stack.api.wait_for_run(dag_id, run_id, timeout=150)


def _attempt_log(stack: StackProcess, dag_id: str, run_id: str, task_id: str, attempt: int) -> str:
    path = stack.state_dir / "logs" / "airflow" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return (path / f"attempt={attempt}.log").read_text(errors="replace")


def test_task_process_killed_mid_export(stack: StackProcess) -> None:
    """Row 6, the export: the retry completes one verified backup; nothing of the killed attempt is left."""
    _idle(stack)
    catalog = _cluster(stack).dsn("backup_catalog")
    run_id = stack.api.trigger("backup_daily_full", {"reason": "fault matrix row 6"})["dag_run_id"]
    runner = _running_task_process(stack, "backup_daily_full", run_id, "backup")

    def opened() -> list[tuple[str, str]]:  # by the task's preflight, its first phase
        with psycopg.connect(catalog) as conn:
            return conn.execute(
                "SELECT backup_id, status FROM backup_operations WHERE run_id = %s", (run_id,)
            ).fetchall()

    ((backup_id, status),) = wait_for(opened, 30, "the backup's catalog row")
    assert status == "in_progress"
    wait_for(lambda: _snapshot_exported(stack, slot_name_for(backup_id)), 60, "the export's snapshot")
    # S3 stops answering: the export's S3 writer, then the export, wait in the middle of the stream
    with _paused(stack, "moto-s3"):
        time.sleep(1.5)  # the whole export takes about a second: it is over by now unless it waits on S3
        assert _snapshot_exported(stack, slot_name_for(backup_id)), "the export ended before S3 stopped"
        attempt, tools = {s[0] for s in _sessions(stack, SOURCE)}, _tools(runner)
        print(f"killing the task process in the export ({_export_stage(stack, tools)}): {_sessions(stack, SOURCE)}")
        _kill(runner)
        wait_for(lambda: not _running(tools), 10, f"{_running(tools)} to die with their task process")
        wait_for(lambda: not attempt & {s[0] for s in _sessions(stack, SOURCE)}, 15, "the killed attempt's sessions")
    _wait_up_for_retry(stack, "backup_daily_full", run_id, "backup")
    with psycopg.connect(_cluster(stack).dsn(SOURCE)) as conn:  # the slot outlives its session, idle, for the retry
        assert conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot_name_for(backup_id),)
        ).fetchall() == [(False,)]
    assert not _holders(stack), _holders(stack)

    assert _finished(stack, "backup_daily_full", run_id)["state"] == "success", stack.log_tail()
    # the killed attempt failed and Airflow retried it (the DAG's retries; the stack's retry delay is 30 s)
    ((_, first, pid), (_, second, _)) = _tries(stack, "backup_daily_full", run_id, "backup")
    assert (first, pid, second) == ("failed", runner.pid, "success")
    with psycopg.connect(catalog) as conn:
        rows = conn.execute(
            "SELECT backup_id, status, integrity_verified FROM backup_operations WHERE run_id = %s", (run_id,)
        ).fetchall()
        replicas = conn.execute(
            "SELECT count(*) FILTER (WHERE verified), count(*) FROM backup_replicas WHERE backup_id = %s", (backup_id,)
        ).fetchone()
    assert rows == [(backup_id, "completed", True)]  # one row, the same backup id: no second, partial backup
    assert replicas[0] == replicas[1] == 3
    with psycopg.connect(_cluster(stack).dsn(SOURCE)) as conn:
        slots = conn.execute("SELECT slot_name, active FROM pg_replication_slots").fetchall()
    assert (slot_name_for(backup_id), False) in slots and not any(active for _, active in slots), slots
    wait_for(lambda: not _holders(stack), 15, "no snapshot held on the source")


def _lock_one(conn: psycopg.Connection, tables: list[str]) -> str | None:
    """ACCESS EXCLUSIVE on the first of ``tables`` nobody holds (NOWAIT: the test never queues behind the work
    it interrupts), or None."""
    for table in tables:
        try:
            with conn.transaction():  # a savepoint: a refused lock keeps the transaction
                conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE NOWAIT")
            return table
        except psycopg.errors.LockNotAvailable:
            continue
    return None


@contextlib.contextmanager
def _restore_held(stack: StackProcess) -> Iterator[str]:
    """Once the restore has created the tables (its mark set), one of them locked for the duration: the COPY into
    it, or the indexes and constraints built on it after its load, wait there. Yields the table."""
    with psycopg.connect(_cluster(stack).dsn(RESTORE_TARGET), application_name=LOCKER, autocommit=True) as conn:
        created = "SELECT to_regnamespace(%s) IS NOT NULL AND to_regclass('public.weddings') IS NOT NULL"
        wait_for(lambda: conn.execute(created, (RESTORE_MARK,)).fetchone()[0], 60, "the restore to create tables")
        with conn.transaction():
            tables = [r[0] for r in conn.execute(TABLES)]
            yield wait_for(lambda: _lock_one(conn, tables), 10, "a table of the restore to lock")


def _tables(stack: StackProcess, dbname: str = RESTORE_TARGET, names: list[str] | None = None) -> dict[str, int]:
    """Each user table of ``dbname`` (or those named) with its row count."""
    with psycopg.connect(_cluster(stack).dsn(dbname), autocommit=True) as conn:
        names = sorted(r[0] for r in conn.execute(TABLES)) if names is None else names
        return {n: conn.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names}


def _source_rows(stack: StackProcess, tables: dict[str, int]) -> dict[str, int]:
    return _tables(stack, SOURCE, list(tables))


def test_task_process_killed_mid_restore(stack: StackProcess) -> None:
    """Row 6, the restore: the killed attempt's work is marked as interrupted and no session or pg_restore outlives
    it; the retry puts the target back as it was (empty) first, then restores it to equal the source."""
    _idle(stack)
    _cluster(stack).create_database(RESTORE_TARGET, drop=True)
    conf = {
        "target_conn_id": RESTORE_TARGET,
        "reason": "fault matrix row 6",
        "mode": "latest",
        "dry_run": False,
        "confirm": f"RESTORE {RESTORE_TARGET}",
    }
    run_id = stack.api.trigger("emergency_restore", conf)["dag_run_id"]
    runner = _running_task_process(stack, "emergency_restore", run_id, "restore")
    with _restore_held(stack) as table:
        wait_for(lambda: _waiting_on_lock(stack, RESTORE_TARGET), 30, f"the restore to wait on {table}")
        print(f"killing the task process in the restore: {_sessions(stack, RESTORE_TARGET)}")
        tools = _tools(runner)
        _kill(runner)
        wait_for(lambda: not _running(tools), 10, f"{_running(tools)} to die with their task process")
    wait_for(lambda: not _sessions(stack, RESTORE_TARGET), 15, "the killed attempt's sessions")

    # Killed outright, the attempt could not clean up: what it committed is there, under its mark, and nothing
    # moves any more while the task waits for its retry (Airflow's, after the DAG's retry delay).
    _wait_up_for_retry(stack, "emergency_restore", run_id, "restore")
    with psycopg.connect(_cluster(stack).dsn(RESTORE_TARGET), autocommit=True) as conn:
        mark = conn.execute("SELECT obj_description(to_regnamespace(%s), 'pg_namespace')", (RESTORE_MARK,))
        mark = json.loads(mark.fetchone()[0] or "null")
    with psycopg.connect(_cluster(stack).dsn("backup_catalog")) as conn:
        (planned,) = conn.execute(
            "SELECT backup_used FROM disaster_recovery_events WHERE run_id = %s AND NOT dry_run", (run_id,)
        ).fetchone()
    assert mark is not None and mark["backup_id"] == planned, mark  # interrupted in the middle, and marked so
    left = _tables(stack)
    assert 0 < sum(left.values()) < sum(_source_rows(stack, left).values()), left  # half-way
    time.sleep(1)
    assert _tables(stack) == left

    assert _finished(stack, "emergency_restore", run_id)["state"] == "success", stack.log_tail()
    assert _task(stack, "emergency_restore", run_id, "put_back")["state"] == "skipped"  # only after a last try fails
    ((_, first, pid), (_, second, _)) = _tries(stack, "emergency_restore", run_id, "restore")
    assert (first, pid, second) == ("failed", runner.pid, "success")
    assert "removing the interrupted attempt of this run" in _attempt_log(
        stack, "emergency_restore", run_id, "restore", 2
    )
    assert_same_database(_cluster(stack), SOURCE, RESTORE_TARGET)
    with psycopg.connect(_cluster(stack).dsn("backup_catalog")) as conn:
        events = conn.execute(
            "SELECT status FROM disaster_recovery_events WHERE run_id = %s AND NOT dry_run", (run_id,)
        ).fetchall()
    assert events == [("completed",)], events
    assert _sessions(stack, RESTORE_TARGET) == []
