"""rotate_keys as a DAG run: a backup made under the old key, the DAG run under the new one, and afterwards
every copy verifies with the new key alone (so the old key can leave the connection).

Its own repository and catalog (rotation rewrites every retained backup: the stack's shared ones stay as they
are). The backup is made in this process by the commands; the rotation is a real DAG run.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from wedsync_airflow.resources import airflow_resources
from wedsync_airflow.targets import build_targets
from wedsync_backup.commands.resources import RunRef
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import WedSyncError
from wedsync_backup.policy import load_policy
from wedsync_backup.repository import read_manifest
from wedsync_backup.verify import verify_copy

from tests.fixtures.airflow import Stack, own_repository
from tests.fixtures.backups import full_backup

SOURCE_SQL = "CREATE TABLE vendors (id bigserial PRIMARY KEY, name text); INSERT INTO vendors (name) VALUES ('florist')"


@pytest.mark.slow
def test_rotate_keys_dag_rewraps_every_copy_under_the_new_key(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = own_repository(stack, monkeypatch, SOURCE_SQL)
    run = RunRef("backup_daily_full", f"manual__{uuid.uuid4().hex}", datetime.now(UTC))
    backup_id = full_backup(airflow_resources(load_policy()), run, reason="before the rotation")
    old_key, new_key = stack.config.master_key, base64.b64encode(os.urandom(32)).decode()
    env = {
        **repo.env,
        "AIRFLOW_CONN_BACKUP_ENCRYPTION": json.dumps(
            {"conn_type": "generic", "password": new_key, "extra": {"previous_keys": [old_key]}}
        ),
    }
    result = stack.run_dag("rotate_keys", {"dry_run": False, "reason": "yearly key rotation"}, env=env)
    assert result.state == "success", result.output[-6000:]

    targets = build_targets(load_policy())
    only_new, only_old = (Keyring.from_secrets(k, source="test") for k in (new_key, old_key))
    for target in targets:  # each copy's own manifest was rewritten
        assert verify_copy(read_manifest(target, backup_id), target, only_new).verified
    with pytest.raises(WedSyncError):
        verify_copy(read_manifest(targets[0], backup_id), targets[0], only_old)
    with psycopg.connect(stack.cluster.dsn(repo.catalog)) as conn:
        row = conn.execute(
            "SELECT dry_run, reason, error, completed_at IS NOT NULL, active_key_id FROM key_rotations"
        ).fetchall()
    assert row == [(False, "yearly key rotation", None, True, only_new.active_id)]
