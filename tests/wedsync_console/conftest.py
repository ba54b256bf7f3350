"""The console's stack: a real api-server (with the plugin) and scheduler on free ports, over a real catalog.

One session fixture does the expensive part once: it seeds a small demo source, runs one real
``backup_daily_full`` (so the catalog holds a completed backup with three verified copies), serializes the
DAGs, and starts ``airflow api-server`` and ``airflow scheduler`` (LocalExecutor; cron schedules off, so
only the runs the tests trigger run). The source, catalog, buckets and primary directory are the console's
own, so other tests' backups never show up here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from devstack.airflow_env import airflow_bin
from devstack.demo import create_demo_schema, seed_demo
from devstack.ports import free_port
from tests.fixtures.airflow import Stack
from tests.fixtures.storage import unique_bucket

USERS = {"admin": "admin", "oncall": "admin", "viewer": "viewer", "operator": "op"}  # user -> simple auth manager role
PASSWORD = "console-test-{}"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SEED_SCALE = 0.05


@dataclass
class Console:
    url: str
    env: dict[str, str]
    catalog_dsn: str
    source_dsn: str
    backup_id: str
    restore_conn_id: str
    logs: Path

    def token(self, user: str) -> str:
        req = urllib.request.Request(
            f"{self.url}/auth/token",
            data=json.dumps({"username": user, "password": PASSWORD.format(user)}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["access_token"]

    def catalog(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.catalog_dsn, autocommit=True, row_factory=dict_row)

    def log_tail(self, name: str, lines: int = 60) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s: a throwaway stack need not drain its running tasks."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the api-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2):
                return
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.5)
    raise TimeoutError(f"the api-server did not answer on {url} within {timeout:.0f}s")


# Package scope: its scheduler must not outlive these tests. It shares the stack's metadata database, and the DAGs
# it unpauses (full, incremental, emergency_restore) would have their queued tasks run by it, not by a later test's
# `airflow dags test`: that test's run then ends with tasks it never ran (the cause of the 'No tasks to run' runs).
@pytest.fixture(scope="package")
def console(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    base = tmp_path_factory.mktemp("console")
    config = dataclasses.replace(
        stack.config,
        home=base / "airflow",
        primary_path=base / "primary",
        s3_bucket=unique_bucket("s3"),
        gcs_bucket=unique_bucket("gcs"),
        source_db="console_source",
        catalog_db="console_catalog",
    )
    config.create_databases()
    config.create_buckets()
    source_dsn = stack.cluster.dsn(config.source_db)
    create_demo_schema(source_dsn)
    seed_demo(source_dsn, SEED_SCALE, workers=1)
    restore_db = stack.new_database("console_restore")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    passwords = base / "passwords.json"
    passwords.write_text(json.dumps({u: PASSWORD.format(u) for u in USERS}))
    env = config.env(extra_connections={"restore_target": stack.conn_json(restore_db)})
    env.update(
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=",".join(f"{u}:{r}" for u, r in USERS.items()),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=url,
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{url}/execution/",
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",  # only the runs the tests trigger
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT="60",  # a busy CI machine must not fail a task's start
        WEDSYNC_RETRY_DELAY_SECONDS="1",
    )
    logs = base / "logs"
    logs.mkdir()
    subprocess.run([airflow_bin(), "dags", "reserialize"], env=env, check=True, capture_output=True)
    # DAGs are created paused (as in the local stack): run exactly the ones the tests trigger, not the drills
    # and archives an Asset or a schedule would start
    used = "^(backup_daily_full|backup_hourly_incremental|emergency_restore)$"
    unpause = [airflow_bin(), "dags", "unpause", "--treat-dag-id-as-regex", "-y", used]
    subprocess.run(unpause, env=env, check=True, capture_output=True)
    first = stack.run_dag("backup_daily_full", env=env)
    assert first.state == "success", first.output[-6000:]
    catalog_dsn = stack.cluster.dsn(config.catalog_db)
    with psycopg.connect(catalog_dsn) as conn:
        backup_id = conn.execute("SELECT backup_id FROM backup_operations WHERE status = 'completed'").fetchone()[0]

    procs = [
        _start([airflow_bin(), "api-server", "--port", str(port), "--host", "127.0.0.1"], env, logs / "api-server.log")
    ]
    try:
        _wait_healthy(url, procs[0], 120)
        procs.append(_start([airflow_bin(), "scheduler"], env, logs / "scheduler.log"))
        yield Console(url, env, catalog_dsn, source_dsn, backup_id, "restore_target", logs)
    finally:
        for proc in reversed(procs):  # the scheduler first, so no task is left calling a stopped api-server
            _stop(proc)
        ARTIFACTS.mkdir(exist_ok=True)
        for log in logs.glob("*.log"):
            (ARTIFACTS / f"console-{log.name}").write_bytes(log.read_bytes())
