"""backup_weekly_archive as a DAG run: archive and prune succeed, every copy is verified and recorded, and the
S3 copy is in its archive class under Object Lock (read back through the provider hook).

The GCS hold is not asserted: the GCS emulator does not store retention locks or holds (see test_archive.py).
"""

from __future__ import annotations

import psycopg
import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from wedsync_airflow.targets import build_targets
from wedsync_backup.policy import load_policy

from tests.fixtures.airflow import Stack, own_repository

SOURCE_SQL = "CREATE TABLE venues (id bigserial PRIMARY KEY, name text); INSERT INTO venues (name) VALUES ('barn')"


@pytest.mark.slow
def test_backup_weekly_archive_dag_archives_verifies_and_records(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = own_repository(stack, monkeypatch, SOURCE_SQL, s3_object_lock=True)
    result = stack.run_dag("backup_weekly_archive", env=repo.env)
    assert result.state == "success", result.output[-6000:]

    with psycopg.connect(stack.cluster.dsn(repo.catalog)) as conn:
        rows = conn.execute(
            "SELECT backup_id, backup_type, status, integrity_verified FROM backup_operations"
        ).fetchall()
        [(backup_id, *state)] = rows
        assert state == ["archive", "completed", True]
        verified = conn.execute(
            "SELECT target_name FROM backup_replicas WHERE backup_id = %s AND verified ORDER BY 1", (backup_id,)
        ).fetchall()
    assert [v[0] for v in verified] == ["offsite", "primary", "secondary"]
    s3 = {t.name: t for t in build_targets(load_policy())}["secondary"]
    key = next(o.key for o in s3.list(f"backups/{backup_id}/"))
    head = S3Hook(aws_conn_id=s3.conn_id).get_conn().head_object(Bucket=s3.bucket, Key=s3._full(key))
    assert (head["StorageClass"], head["ObjectLockMode"]) == ("GLACIER_IR", "GOVERNANCE")
