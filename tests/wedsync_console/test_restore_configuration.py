"""restore_configuration as a whole DAG run (`airflow dags test`), over the console stack's first backup_daily_full
(whose configurations component it reads back): the plan and the confirmed restore, in real Airflow tasks."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import psycopg
import pytest
from wedsync_backup.policy import policy_file_path

from tests.fixtures.airflow import Stack
from tests.wedsync_console.conftest import Console

pytestmark = pytest.mark.slow


def test_restore_configuration_brings_back_a_lost_connection(console: Console, stack: Stack, tmp_path: Path) -> None:
    env = {k: v for k, v in console.env.items() if k != "AIRFLOW_CONN_RESTORE_TARGET"}  # this one was "lost"
    policy_out = tmp_path / "config" / "backup_policy.yaml"
    conf = {
        "target_conn_id": "backup_catalog",
        "policy_out": str(policy_out),
        "dry_run": False,
        "confirm": "RESTORE CONFIGURATION",
    }
    airflow_db = stack.cluster.dsn(stack.config.airflow_db)
    try:
        result = stack.run_dag("restore_configuration", conf, env=env)
        assert result.state == "success", result.output[-6000:]
        with psycopg.connect(airflow_db) as conn:
            row = conn.execute("SELECT conn_type, schema FROM connection WHERE conn_id = 'restore_target'").fetchone()
    finally:
        with psycopg.connect(airflow_db, autocommit=True) as conn:
            conn.execute("DELETE FROM connection WHERE conn_id = 'restore_target'")
    restore_target = json.loads(console.env["AIRFLOW_CONN_RESTORE_TARGET"])
    assert row == ("postgres", restore_target["schema"])  # imported from the backup
    assert policy_out.read_text() == policy_file_path().read_text()
    assert stat.S_IMODE(policy_out.stat().st_mode) == 0o600
