"""Fault matrix rows 5, 6 and 10, and one meaning for a Postgres connection (TLS only, verify-full).

Row 5 restarts a real (TLS-only) source server while pg_dump works; row 6 SIGKILLs a real task process in
the middle of an export and of a restore (a process of our own running one core command; the Airflow task
process under the real scheduler is killed in test_stack_task_kill.py); row 10 runs writers side by side.
Each ends with a correct retry or one clear error, and leaves no session or client tool behind.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from wedsync_backup.errors import ConcurrentWriterError, ConfigError, WedSyncError
from wedsync_backup.export import run_export
from wedsync_backup.manifest import Manifest
from wedsync_backup.pg import PgTarget
from wedsync_backup.restore import interrupted_restore, restore_backup, target_contents
from wedsync_backup.storage.local import LocalStorage
from wedsync_backup.verify import verify_copy

from tests.faults.conftest import APP, FaultWorld, conn_json
from tests.faults.helpers import (
    FAULT_SQL,
    child_tools,
    commit_everywhere,
    new_backup_id,
    sessions,
    task_process,
    tool_processes,
    wait_for,
)
from tests.faults.tls import PASSWORD, ROLE, TlsCluster, tls_cluster
from tests.fixtures.airflow import fingerprint

APP_TLS = f"{APP}-tls"


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsCluster]:
    yield from tls_cluster()


def _tls_connection(tls: TlsCluster, monkeypatch: pytest.MonkeyPatch, conn_id: str, dbname: str) -> PgTarget:
    """An Airflow connection to the TLS-only server, read by the project the way a task reads it."""
    from wedsync_airflow.connections import pg_target

    extra = tls.connection_extra(APP_TLS) | {"options": "-c work_mem=7777kB"}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        conn_json(
            conn_type="postgres",
            host="127.0.0.1",
            port=tls.cluster.port,
            login=ROLE,
            password=PASSWORD,
            schema=dbname,
            extra=extra,
        ),
    )
    return pg_target(conn_id, "source")


def _locked(dsn: str) -> psycopg.Connection:
    """A session holding ACCESS EXCLUSIVE on the partitioned table ``events`` (not its partition): the export's
    own queries never touch it, but pg_dump locks every table it dumps, so pg_dump waits there, running."""
    conn = psycopg.connect(dsn)
    conn.execute("LOCK TABLE ONLY events IN ACCESS EXCLUSIVE MODE")
    return conn


def _waiting_dumps(admin_dsn: str, app: str) -> int:
    """pg_dump sessions of ``app`` waiting on the lock (pg_dump's queries start with its lock statements)."""
    return sum(1 for s in sessions(admin_dsn, app) if s[3] == "Lock" and "LOCK TABLE" in s[4])


def _in_thread(fn) -> tuple[threading.Thread, list]:  # type: ignore[no-untyped-def]
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def test_tls_only_server_with_verify_full(tls: TlsCluster, world: FaultWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg, pg_dump and pg_restore all get sslmode, the CA, the client certificate and the options."""
    with tls.admin() as admin:
        admin.execute(f"CREATE DATABASE tls_src OWNER {ROLE}")
        admin.execute(f"CREATE DATABASE tls_dst OWNER {ROLE}")
    with tls.admin("tls_src") as conn:
        conn.execute(FAULT_SQL)
    source = _tls_connection(tls, monkeypatch, "tls_source", "tls_src")

    # preflight's check of the source
    with source.connect(autocommit=True) as conn:
        ssl, work_mem = conn.execute(
            "SELECT ssl, current_setting('work_mem') FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert ssl is True and work_mem == "7777kB"

    # export: pg_dump connects with the same parameters (the server refuses it otherwise)
    storage = LocalStorage(world.base / "tls", name="primary", medium="disk", site="a")
    manifest = run_export(source, storage, world.ring, backup_id=new_backup_id())

    # restore: pg_restore and the COPY workers too
    target = _tls_connection(tls, monkeypatch, "tls_restore", "tls_dst")
    restore_backup(manifest, storage, world.ring, target)
    assert fingerprint(tls.admin_dsn("tls_dst")) == fingerprint(tls.admin_dsn("tls_src"))

    # a connection that drops the CA fails at once, naming the certificate: not a fault to retry
    no_ca = PgTarget(**{**source.__dict__, "options": {k: v for k, v in source.options.items() if k != "sslrootcert"}})
    with pytest.raises(ConfigError, match="certificate") as e:
        no_ca.connect()
    assert not e.value.transient


def test_source_restarted_mid_export(tls: TlsCluster, world: FaultWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 5: a restart during pg_dump is a transient fault; the retry completes a correct backup."""
    source = _tls_connection(tls, monkeypatch, "tls_source", "tls_src")
    storage = LocalStorage(world.base / "r5", name="primary", medium="disk", site="a")
    backup_id = new_backup_id()
    locker = _locked(tls.admin_dsn("tls_src"))
    thread, outcome = _in_thread(lambda: run_export(source, storage, world.ring, backup_id=backup_id))
    wait_for(lambda: _waiting_dumps(tls.admin_dsn(), APP_TLS), 20, "pg_dump to start")
    tls.cluster.stop()  # fast shutdown: every session is terminated
    tls.cluster.start()
    with contextlib.suppress(psycopg.Error):
        locker.close()
    thread.join(30)
    (error,) = outcome
    assert isinstance(error, WedSyncError) and error.transient, error
    assert child_tools() == []

    manifest = run_export(source, storage, world.ring, backup_id=backup_id)  # the retry
    assert verify_copy(manifest, storage, world.ring, deep=True).verified
    with tls.admin() as admin:
        admin.execute(f"CREATE DATABASE tls_r5 OWNER {ROLE}")
    restore_backup(manifest, storage, world.ring, _tls_connection(tls, monkeypatch, "tls_r5", "tls_r5"))
    assert fingerprint(tls.admin_dsn("tls_r5")) == fingerprint(tls.admin_dsn("tls_src"))


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_task_killed_mid_export_and_mid_restore(world: FaultWorld) -> None:
    """Row 6: SIGKILL of a real task process; no session or client tool outlives it; the retries complete."""
    app = f"{APP}-r6"
    admin = world.cluster.dsn()

    # mid-export: pg_dump is running (waiting on a lock) when the task dies. A backend notices that its client
    # is gone only when it next talks to it, or every client_connection_check_interval: set through the
    # connection's options, which reach pg_dump's session as they reach every other.
    source = world.target(world.source_db, app=app)
    source = PgTarget(
        **{**source.__dict__, "options": {**source.options, "options": "-c client_connection_check_interval=500"}}
    )
    root = world.base / "r6"
    backup_id = new_backup_id()
    locker = _locked(world.cluster.dsn(world.source_db))
    try:
        task = task_process("export", world.master_key, source, root, backup_id)
        try:
            wait_for(lambda: _waiting_dumps(admin, app) and tool_processes(app), 30, "the task's pg_dump")
        except AssertionError:
            _kill(task)
            raise AssertionError(f"{sessions(admin, app)} {task.stderr.read().decode()[-3000:]}") from None
        _kill(task)
        # with the lock still held, an orphaned pg_dump would still be there, waiting
        wait_for(lambda: not tool_processes(app), 10, "pg_dump to die with its task")
        wait_for(lambda: not sessions(admin, app), 10, "the killed task's sessions to end")
    finally:
        locker.close()
    storage = LocalStorage(root, name="primary", medium="disk", site="a")
    manifest = run_export(source, storage, world.ring, backup_id=backup_id)  # the retry
    assert verify_copy(manifest, storage, world.ring).verified
    commit_everywhere(manifest, [storage])

    # mid-restore: the schema is in, the data is loading, when the task dies
    target_db = world.new_db("r6")
    target = world.target(target_db, app=app)
    task = task_process("restore", world.master_key, target, root, backup_id)
    with psycopg.connect(world.cluster.dsn(target_db), autocommit=True) as watch:
        try:
            wait_for(
                lambda: watch.execute("SELECT to_regclass('public.guests') IS NOT NULL").fetchone()[0],
                30,
                "the restore to create the tables",
            )
        except AssertionError:
            _kill(task)
            raise AssertionError(task.stderr.read().decode()[-3000:]) from None
    _kill(task)
    wait_for(lambda: not tool_processes(app), 10, "pg_restore to die with its task")
    wait_for(lambda: not sessions(admin, app), 10, "the killed task's sessions to end")
    assert target_contents(target) and interrupted_restore(target) is not None  # it was killed half-way
    result = restore_backup(Manifest.from_bytes(manifest.to_bytes()), storage, world.ring, target)  # the retry
    assert result.rows == manifest.total_rows
    assert interrupted_restore(target) is None
    assert fingerprint(world.cluster.dsn(target_db)) == fingerprint(world.cluster.dsn(world.source_db))


def test_two_writers(world: FaultWorld) -> None:
    """Row 10: a second writer of the same backup is refused at once; two different backups both complete."""
    app = f"{APP}-r10"
    source = world.target(world.source_db, app=app)
    storage = LocalStorage(world.base / "r10", name="primary", medium="disk", site="a")
    first, other = new_backup_id(), new_backup_id()
    locker = _locked(world.cluster.dsn(world.source_db))
    try:
        a, a_out = _in_thread(lambda: run_export(source, storage, world.ring, backup_id=first))
        c, c_out = _in_thread(lambda: run_export(source, storage, world.ring, backup_id=other))
        wait_for(lambda: _waiting_dumps(world.cluster.dsn(), app) == 2, 30, "both exports to be running")
        with pytest.raises(ConcurrentWriterError, match=first) as e:
            run_export(source, storage, world.ring, backup_id=first)
        assert not e.value.transient and "another run" in str(e.value)
    finally:
        locker.close()
    a.join(60)
    c.join(60)
    for out in (a_out, c_out):
        (manifest,) = out
        assert isinstance(manifest, Manifest), manifest
        assert verify_copy(manifest, storage, world.ring).verified
    assert {m.backup_id for m in (a_out[0], c_out[0])} == {first, other}


def test_task_timeout_mid_restore_propagates_after_the_clean_up(
    world: FaultWorld, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow's execution_timeout (SIGALRM raising AirflowTaskTimeout, a BaseException) in the middle of a
    restore: the workers and pg_restore are stopped, the target is put back, and the timeout itself comes out,
    not an ordinary RestoreError that would be retried."""
    from airflow.sdk.exceptions import AirflowTaskTimeout

    app = f"{APP}-timeout"
    target_db = world.new_db("timeout")
    target = world.target(target_db, app=app)

    def timeout(signum: int, frame: object) -> None:
        raise AirflowTaskTimeout("Timeout, PID: test")

    import wedsync_backup.restore as restore_module

    real_spawn = restore_module.spawn_tool
    armed: list[bool] = []

    def spawn_then_time_out(*args: Any, **kwargs: Any) -> Any:
        """The alarm is set once, when the restore's first pg_restore runs: it strikes mid-restore however
        fast the machine is."""
        proc = real_spawn(*args, **kwargs)
        if not armed:
            armed.append(True)
            signal.setitimer(signal.ITIMER_REAL, 0.15)
        return proc

    monkeypatch.setattr(restore_module, "spawn_tool", spawn_then_time_out)
    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        with pytest.raises(AirflowTaskTimeout) as raised:
            restore_backup(world.backup, world.targets[0], world.ring, target)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    del raised  # Airflow ends the task process after a timeout; what must not outlive it is running work
    gc.collect()
    assert "putting" in caplog.text and "back as it was" in caplog.text  # it struck mid-restore
    assert target_contents(target) == []
    assert child_tools() == []
    try:
        wait_for(lambda: not sessions(world.cluster.dsn(), app), 10, "the restore's sessions to end")
    except AssertionError as e:
        raise AssertionError(f"{e}: {sessions(world.cluster.dsn(), app)}\n{caplog.text[-3000:]}") from None
