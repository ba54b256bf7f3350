"""The files component through the DAGs: backup_daily_full backs the files bucket up, emergency_restore with
components=["files"] writes it back (the database tasks skip), on the real stack (moto S3 over the wire)."""

from __future__ import annotations

import hashlib

import pytest

from devstack.files_seed import object_for
from tests.fixtures.airflow import Stack
from tests.fixtures.storage import unique_bucket
from tests.wedsync_backup.files.conftest import FILES_SQL

pytestmark = pytest.mark.slow


def test_files_back_up_and_restore_through_the_dags(stack: Stack) -> None:
    source, bucket = stack.new_database("files_src"), unique_bucket("files")
    stack.cluster.psql(dbname=source, input=FILES_SQL)
    s3 = stack.config.s3
    s3.create_bucket(bucket)
    objects = {f"weddings/{w}/photos/IMG_{w}.jpg": b"" for w in (1, 2)} | {"weddings/3/docs/contract.pdf": b""}
    rows = []
    for i, path in enumerate(objects, 1):
        objects[path] = object_for(path)
        s3.client().put_object(Bucket=bucket, Key=path, Body=objects[path])
        rows.append(f"({i}, '{path}', {len(objects[path])}, '\\x{hashlib.sha256(objects[path]).hexdigest()}')")
    stack.cluster.psql(
        dbname=source,
        input=f"INSERT INTO public.files (wedding_id, storage_path, size_bytes, checksum) VALUES {', '.join(rows)};",
    )
    env = stack.env(WEDSYNC_SOURCE=stack.conn_json(source), WEDSYNC_FILES=s3.airflow_conn_json())
    env["WEDSYNC_FILES_BUCKET"] = bucket

    backup = stack.run_dag("backup_daily_full", env=env)
    assert backup.state == "success", backup.output[-6000:]
    with stack.catalog() as cat:
        row = cat.execute(
            "SELECT b.components_backed_up, f.objects FROM backup_operations b JOIN backup_files f USING (backup_id)"
            " ORDER BY b.completed_at DESC NULLS LAST LIMIT 1"
        ).fetchone()
    assert row is not None and "files" in row[0] and row[1] == 3

    first, second, _ = objects
    s3.client().delete_object(Bucket=bucket, Key=first)
    s3.client().put_object(Bucket=bucket, Key=second, Body=b"not the photo")
    conf = {
        "components": ["files"],
        "target_conn_id": "restore_target",
        "dry_run": False,
        "confirm": "RESTORE restore_target",
        "reason": "files round trip",
    }
    restore = stack.run_dag("emergency_restore", conf, env=env)
    assert restore.state == "success", restore.output[-6000:]
    listed = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert listed == set(objects), restore.output[-6000:]
    got = {p: s3.client().get_object(Bucket=bucket, Key=p)["Body"].read() for p in objects}
    assert got == objects
