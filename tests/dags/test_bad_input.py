"""Bad input, end to end: each wrong connection, key, bucket or parameter fails with ONE error naming the fix.

And it fails safe: no 'completed' backup row, no new object on any target, no restore target touched.
Each case is one real `airflow dags test` run against the local stack; one good backup made for this
module is shared by the restore cases (and tampered with, then repaired, by the last one).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from wedsync_backup.crypto import key_id_for
from wedsync_backup.manifest import Manifest, manifest_key
from wedsync_backup.policy import POLICY_ENV, load_policy

from tests.fixtures.airflow import DagResult, Stack, assert_same_database, fingerprint, is_empty

pytestmark = pytest.mark.slow

Snapshot = dict[str, frozenset[tuple[str, int]]]
GENERATE_KEY_HINT = "base64.b64encode(os.urandom(32))"


# --- helpers ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _applied(env: dict[str, str]) -> Iterator[None]:
    """This process sees the stack's connections and buckets, as a task would (for counting objects)."""
    keys = [k for k in env if k.startswith(("AIRFLOW_CONN_", "WEDSYNC_BACKUP_", "STORAGE_EMULATOR"))]
    saved = {k: os.environ.get(k) for k in [*keys, POLICY_ENV]}
    os.environ.update({k: env[k] for k in keys})
    os.environ.pop(POLICY_ENV, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def target_objects(stack: Stack) -> Snapshot:
    """Every object (key, size) on each of the three targets, listed through the real provider hooks."""
    from wedsync_airflow.targets import build_targets

    with _applied(stack.env()):
        return {s.name: frozenset((o.key, o.size) for o in s.list()) for s in build_targets(load_policy())}


def backup_rows(stack: Stack) -> dict[str, str]:
    with stack.catalog() as cat:
        return dict(cat.execute("SELECT backup_id, status FROM backup_operations").fetchall())


def last_event_id(stack: Stack) -> int:
    with stack.catalog() as cat:
        return cat.execute("SELECT coalesce(max(id), 0) FROM disaster_recovery_events").fetchone()[0]


def events_since(stack: Stack, event_id: int) -> list[dict[str, Any]]:
    with stack.catalog() as cat:
        cat.row_factory = psycopg.rows.dict_row
        return cat.execute(
            "SELECT id, status, error, backup_id, dry_run, run_id FROM disaster_recovery_events"
            " WHERE id > %s ORDER BY id",
            (event_id,),
        ).fetchall()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def task_states(stack: Stack, dag_id: str, run_id: str | None = None) -> dict[str, tuple[str, int]]:
    """task_id -> (state, try_number) in one DAG run (default: the latest), from the Airflow metadata DB."""
    with psycopg.connect(stack.cluster.dsn(stack.config.airflow_db)) as conn:
        if run_id is None:
            run_id = conn.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = %s ORDER BY id DESC LIMIT 1", (dag_id,)
            ).fetchone()[0]
        rows = conn.execute(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s AND map_index <= 0",
            (dag_id, run_id),
        ).fetchall()
    return {task: (state, tries) for task, state, tries in rows}


def one_clear_error(result: DagResult, *expected: str) -> None:
    """The run failed, and its output carries the actionable error: what failed and how to fix it."""
    tail = result.output[-8000:]
    assert result.state == "failed", tail
    assert "To fix:" in result.output, tail
    for text in expected:
        assert text in result.output, f"{text!r} not in output:\n{tail}"


@dataclass
class GoodBackup:
    source_db: str
    backup_id: str


SOURCE_SQL = """
CREATE TABLE organizations (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE clients (id bigserial PRIMARY KEY, organization_id bigint REFERENCES organizations, email text);
CREATE INDEX clients_org ON clients (organization_id);
INSERT INTO organizations (name) SELECT 'org ' || g FROM generate_series(1, 50) g;
INSERT INTO clients (organization_id, email) SELECT 1 + g % 50, 'c' || g || '@example.com'
  FROM generate_series(1, 2000) g;
"""


@pytest.fixture(scope="module")
def good_backup(stack: Stack) -> GoodBackup:
    """One completed backup of a small database, made for this module (the restore cases read it)."""
    source = stack.new_database("badinput_src")
    with psycopg.connect(stack.cluster.dsn(source), autocommit=True) as conn:
        conn.execute(SOURCE_SQL)
    result = stack.run_dag("backup_daily_full", env=stack.env(WEDSYNC_SOURCE=stack.conn_json(source)))
    assert result.state == "success", result.output[-6000:]
    with stack.catalog() as cat:
        backup_id = cat.execute(
            "SELECT backup_id FROM backup_operations WHERE status = 'completed' ORDER BY completed_at DESC LIMIT 1"
        ).fetchone()[0]
    return GoodBackup(source, backup_id)


def backup_env(stack: Stack, good: GoodBackup, drop: tuple[str, ...] = (), **overrides: str) -> dict[str, str]:
    env = stack.env(WEDSYNC_SOURCE=stack.conn_json(good.source_db))
    for name in drop:
        env.pop(name, None)
    env.update(overrides)
    return env


def assert_backup_fails_safely(stack: Stack, env: dict[str, str], *expected: str) -> DagResult:
    rows, objects = backup_rows(stack), target_objects(stack)
    result = stack.run_dag("backup_daily_full", env=env)
    one_clear_error(result, *expected)
    states = task_states(stack, "backup_daily_full")
    # ONE error: the backup task's preflight failed; mark_failed has nothing to mark and must not fail too
    assert states["backup"][0] == "failed", states
    assert states["mark_failed"][0] == "skipped", states
    assert {s for t, (s, _) in states.items() if t not in ("backup", "mark_failed")} == {"upstream_failed"}
    new = {k: v for k, v in backup_rows(stack).items() if rows.get(k) != v}
    assert all(status == "failed" for status in new.values()), new
    assert target_objects(stack) == objects, "a failed backup left objects on a target"
    return result


# --- backup: bad connections, endpoints, buckets and keys --------------------------------------------------
def test_backup_with_a_missing_connection(stack: Stack, good_backup: GoodBackup) -> None:
    env = backup_env(stack, good_backup, drop=("AIRFLOW_CONN_BACKUP_SECONDARY_S3",))
    assert_backup_fails_safely(stack, env, "backup_secondary_s3", "AIRFLOW_CONN_BACKUP_SECONDARY_S3")


def test_backup_with_no_catalog_connection(stack: Stack, good_backup: GoodBackup) -> None:
    """mark_failed has no catalog to look in either: it skips (one error, the preflight's), never fails too."""
    env = backup_env(stack, good_backup, drop=("AIRFLOW_CONN_BACKUP_CATALOG",))
    assert_backup_fails_safely(stack, env, "backup_catalog", "AIRFLOW_CONN_BACKUP_CATALOG")


def test_backup_with_an_unreachable_s3_endpoint(stack: Stack, good_backup: GoodBackup) -> None:
    port = closed_port()
    conn = json.loads(stack.config.s3.airflow_conn_json())
    conn["extra"]["endpoint_url"] = f"http://127.0.0.1:{port}"
    env = backup_env(stack, good_backup, AIRFLOW_CONN_BACKUP_SECONDARY_S3=json.dumps(conn))
    assert_backup_fails_safely(stack, env, "unreachable", f"127.0.0.1:{port}", "backup_secondary_s3")


def test_backup_with_a_missing_bucket(stack: Stack, good_backup: GoodBackup) -> None:
    env = backup_env(stack, good_backup, WEDSYNC_BACKUP_GCS_BUCKET="does-not-exist-xyz")
    assert_backup_fails_safely(
        stack, env, "GCS bucket 'does-not-exist-xyz' does not exist", "WEDSYNC_BACKUP_GCS_BUCKET"
    )


def test_backup_with_a_malformed_master_key(stack: Stack, good_backup: GoodBackup) -> None:
    bad_key = json.dumps({"conn_type": "generic", "password": "not-a-key"})
    env = backup_env(stack, good_backup, AIRFLOW_CONN_BACKUP_ENCRYPTION=bad_key)
    result = assert_backup_fails_safely(stack, env, "backup_encryption", GENERATE_KEY_HINT)
    assert "not-a-key" not in result.output.split("backup_encryption", 1)[-1].split("\n", 1)[0]


def test_backup_failing_after_export_is_recorded_failed_never_completed(stack: Stack, good_backup: GoodBackup) -> None:
    """A source login that can connect (preflight passes) but not read the tables: export fails."""
    role = f"no_read_{uuid.uuid4().hex[:8]}"
    stack.cluster.psql("-c", f"CREATE ROLE {role} LOGIN", dbname=good_backup.source_db)
    source = json.loads(stack.conn_json(good_backup.source_db))
    source["login"] = role
    rows = backup_rows(stack)
    result = stack.run_dag(
        "backup_daily_full",
        env=backup_env(stack, good_backup, AIRFLOW_CONN_WEDSYNC_SOURCE=json.dumps(source)),
    )
    assert result.state == "failed", result.output[-6000:]
    assert "permission denied" in result.output, result.output[-6000:]
    new = {k: v for k, v in backup_rows(stack).items() if k not in rows}
    assert len(new) == 1 and set(new.values()) == {"failed"}, new
    states = task_states(stack, "backup_daily_full")
    assert states["backup"][0] == "failed" and states["mark_failed"][0] == "success", states
    (backup_id,) = new
    with _applied(stack.env()):
        from wedsync_airflow.targets import build_targets

        for storage in build_targets(load_policy()):
            assert not storage.exists(manifest_key(backup_id)), storage.name


# --- restore ------------------------------------------------------------------------------------------------
@dataclass
class RestoreRun:
    result: DagResult
    target_db: str
    events: list[dict[str, Any]]


def run_restore(
    stack: Stack,
    conf: dict[str, Any],
    *,
    target_db: str | None = None,
    **connections: str,
) -> RestoreRun:
    target_db = target_db or stack.new_database("badinput_dst")
    since = last_event_id(stack)
    env = stack.env(restore_target=stack.conn_json(target_db), **connections)
    result = stack.run_dag("emergency_restore", conf, env=env)
    return RestoreRun(result, target_db, events_since(stack, since))


def confirmed(backup_id: str, **extra: Any) -> dict[str, Any]:
    conf = {
        "mode": "backup_id",
        "backup_id": backup_id,
        "target_conn_id": "restore_target",
        "dry_run": False,
        "confirm": "RESTORE restore_target",
        "reason": "bad-input test",
    }
    conf.update(extra)
    return conf


def assert_refused(stack: Stack, run: RestoreRun, *expected: str) -> dict[str, Any]:
    one_clear_error(run.result, *expected)
    assert is_empty(stack.cluster, run.target_db)
    assert len(run.events) == 1, run.events
    event = run.events[0]
    assert event["status"] == "refused", event
    assert task_states(stack, "emergency_restore", event["run_id"])["put_back"][0] == "skipped"  # nothing was restored
    for text in expected:
        assert text in (event["error"] or ""), event
    return event


def test_restore_with_wrong_confirmation(stack: Stack, good_backup: GoodBackup) -> None:
    run = run_restore(stack, confirmed(good_backup.backup_id, confirm="RESTORE wedsync_source"))
    assert_refused(stack, run, "Restore not confirmed", "'RESTORE restore_target'")  # plan checks it (CLI path)


def test_restore_without_target_conn_id_is_refused_before_a_run(stack: Stack, good_backup: GoodBackup) -> None:
    conf = confirmed(good_backup.backup_id)
    del conf["target_conn_id"]
    run = run_restore(stack, conf)
    assert run.result.returncode != 0
    assert run.result.state != "success"
    assert "target_conn_id" in run.result.output, run.result.output[-4000:]
    assert run.events == []
    assert is_empty(stack.cluster, run.target_db)


def test_restore_into_a_non_empty_database(stack: Stack, good_backup: GoodBackup) -> None:
    target_db = stack.new_database("badinput_busy")
    dsn = stack.cluster.dsn(target_db)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE live_orders (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO live_orders VALUES (1, 'do not lose me')")
    before = fingerprint(dsn)
    run = run_restore(stack, confirmed(good_backup.backup_id), target_db=target_db)
    one_clear_error(run.result, "is not empty", "public.live_orders")
    assert fingerprint(dsn) == before
    assert [e["status"] for e in run.events] == ["refused"]


def test_restore_with_the_wrong_master_key(stack: Stack, good_backup: GoodBackup) -> None:
    other_key = json.dumps({"conn_type": "generic", "password": base64.b64encode(os.urandom(32)).decode()})
    run = run_restore(stack, confirmed(good_backup.backup_id), BACKUP_ENCRYPTION=other_key)
    key_id = key_id_for(base64.b64decode(stack.config.master_key))
    assert_refused(stack, run, key_id, "previous_keys")


def test_restore_of_an_unknown_backup_id(stack: Stack, good_backup: GoodBackup) -> None:
    missing = "full-20200101T000000Z-deadbeef"
    run = run_restore(stack, confirmed(missing))
    assert_refused(stack, run, f"Backup {missing} has no manifest on target primary")


def test_dry_run_plans_and_touches_nothing(stack: Stack, good_backup: GoodBackup) -> None:
    conf = {"mode": "backup_id", "backup_id": good_backup.backup_id, "target_conn_id": "restore_target"}
    conf["reason"] = "bad-input dry run"
    run = run_restore(stack, conf)
    assert run.result.state == "success", run.result.output[-6000:]
    states = task_states(stack, "emergency_restore", run.events[0]["run_id"])
    assert {t: state for t, (state, _) in states.items()} == {
        "plan": "success",
        "restore": "skipped",
        "restore_files": "skipped",
        "put_back": "skipped",
    }
    assert is_empty(stack.cluster, run.target_db)
    assert [e["status"] for e in run.events] == ["planned"]
    assert run.events[0]["dry_run"] is True


def _data_object(stack: Stack, backup_id: str) -> Path:
    root = stack.config.primary_path
    manifest = Manifest.from_bytes((root / manifest_key(backup_id)).read_bytes(), source="test")
    biggest = max((p for t in manifest.tables for p in t.parts), key=lambda o: o.stored_bytes)  # a table's data
    return root / biggest.key


def test_tampered_copy_fails_all_or_nothing_then_another_target_restores(stack: Stack, good_backup: GoodBackup) -> None:
    obj = _data_object(stack, good_backup.backup_id)
    original = obj.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    obj.write_bytes(bytes(flipped))
    try:
        run = run_restore(stack, confirmed(good_backup.backup_id, from_target="primary"))
    finally:
        obj.write_bytes(original)
    key = obj.relative_to(stack.config.primary_path).as_posix()
    one_clear_error(run.result, key)
    assert is_empty(stack.cluster, run.target_db), "a failed restore left data in the target"
    assert [e["status"] for e in run.events] == ["failed"], run.events
    assert key in run.events[0]["error"], run.events
    # a damaged copy reads the same on a retry: the restore fails at once, pointing to another target
    states = task_states(stack, "emergency_restore", run.events[0]["run_id"])
    assert states["restore"] == ("failed", 1)
    # the failed restore put the target back itself (no mark left): put_back, run after it, leaves it alone
    assert states["put_back"][0] == "success" and states["restore_files"][0] == "upstream_failed"

    run = run_restore(stack, confirmed(good_backup.backup_id, from_target="secondary"))
    assert run.result.state == "success", run.result.output[-6000:]
    assert_same_database(stack.cluster, good_backup.source_db, run.target_db)
