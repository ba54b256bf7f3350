"""Fault matrix rows 1, 2 and 7: a target that goes away, one that is never there, and a full disk."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from wedsync_backup.errors import StorageError
from wedsync_backup.export import run_export
from wedsync_backup.manifest import pending_manifest_key
from wedsync_backup.replicate import replicate
from wedsync_backup.storage.local import LocalStorage
from wedsync_backup.storage.s3 import S3Storage
from wedsync_backup.verify import verify_copy

from devstack.ports import free_port
from devstack.services import FAKE_AWS_KEY, FAKE_AWS_SECRET, S3_REGION, MotoServer
from tests.faults.conftest import APP, FaultWorld, conn_json
from tests.faults.helpers import child_tools, new_backup_id, sessions, wait_for
from tests.fixtures.storage import unique_bucket


class StopsServerWhenRead(LocalStorage):
    """The primary, which stops the S3 server as the ``nth`` object is being copied from it."""

    def __init__(self, root: Path, server: MotoServer, nth: int) -> None:
        super().__init__(root, name="primary", medium="disk", site="a")
        self.server, self.nth, self.reads = server, nth, 0

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:  # type: ignore[override]
        self.reads += 1
        if self.reads == self.nth:
            self.server.stop()
        return super().read(key, chunk_size)


def _s3(monkeypatch: pytest.MonkeyPatch, server: MotoServer, bucket: str) -> S3Storage:
    """An S3 target through S3Hook, with the short timeouts and few retries a connection may set."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    extra = {
        "endpoint_url": server.endpoint,
        "region_name": S3_REGION,
        "config_kwargs": {"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 2}},
    }
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAULTS_S3", conn_json(conn_type="aws", login=FAKE_AWS_KEY, password=FAKE_AWS_SECRET, extra=extra)
    )
    client = S3Hook(aws_conn_id="faults_s3").get_conn()
    return S3Storage(client, bucket, "wedsync", name="secondary", medium="s3", site="b", conn_id="faults_s3")


def test_s3_stopped_mid_replication_then_back(world: FaultWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 1: the copy fails as a transient fault; the retry completes; exactly the backup's objects count."""
    m = world.backup
    assert len(m.objects()) >= 3
    server = MotoServer().start()
    try:
        bucket = unique_bucket("r1")
        server.create_bucket(bucket)
        dst = _s3(monkeypatch, server, bucket)
        src = StopsServerWhenRead(world.targets[0].root, server, nth=2)  # type: ignore[attr-defined]
        with pytest.raises(StorageError) as e:
            replicate(m, src, dst)
        assert e.value.transient and "unreachable" in str(e.value), e.value

        server = MotoServer(port=server.port).start()  # the same endpoint comes back
        server.create_bucket(bucket)  # (moto keeps its objects in memory: a real S3 would still have it)
        result = replicate(m, world.targets[0], dst)
        assert result.copied + result.skipped == len(m.objects())
        assert verify_copy(m, dst, world.ring).verified
        stored = sorted(o.key for o in dst.list("backups/"))
        assert stored == sorted(o.key for o in m.objects())  # no partial or duplicate object
        assert dst.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        server.stop()


def test_gcs_unreachable_at_preflight_fails_at_once(world: FaultWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 2: preflight's target checks fail at once, without retries, and nothing is written anywhere."""
    from wedsync_airflow.operators.base import WedSyncOperator
    from wedsync_airflow.targets import build_targets
    from wedsync_backup.policy import load_policy

    primary = world.base / f"r2-{uuid.uuid4().hex[:6]}"
    s3_bucket = unique_bucket("r2")
    world.targets[1].client.create_bucket(Bucket=s3_bucket)  # type: ignore[attr-defined]
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_PRIMARY", conn_json(conn_type="fs", extra={"path": str(primary)}))
    monkeypatch.setenv("WEDSYNC_BACKUP_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nothing listens there

    def preflight_checks() -> None:
        for storage in build_targets(load_policy()):
            storage.check()

    started = time.monotonic()
    with pytest.raises(AirflowFailException, match="offsite") as e:
        WedSyncOperator(task_id="preflight").guarded(preflight_checks)
    assert time.monotonic() - started < 15
    assert "gs://" in str(e.value) and "unreachable" in str(e.value)
    assert not isinstance(e.value.__cause__, StorageError) or not e.value.__cause__.transient
    assert not primary.exists() or not any(primary.rglob("*"))
    assert world.targets[1].client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0  # type: ignore[attr-defined]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, mounted for this test only (needs root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_primary_disk_full(world: FaultWorld, small_disk: Path) -> None:
    """Row 7: a clear, permanent error naming the target and its space, at once; no pg_dump or session left.

    The schema alone (a 3 MB comment) is bigger than the disk, so the write fails while pg_dump still has
    output to write: the export used to hang there, reading pg_dump's stderr while pg_dump waited on stdout.
    """
    db = world.new_db("r7")
    world.cluster.psql(
        dbname=db,
        input="CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000);\n"
        "DO $$ BEGIN EXECUTE format('COMMENT ON TABLE t IS %L', "
        "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 100000) g)); END $$;",
    )
    source = world.target(db, app=f"{APP}-r7")
    storage = LocalStorage(small_disk / "backups", name="primary", medium="disk", site="a", conn_id="backup_primary")
    backup_id = new_backup_id()
    outcome: list[BaseException] = []

    def export() -> None:
        try:
            run_export(source, storage, world.ring, backup_id=backup_id)
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=export, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=60)
    hung = worker.is_alive()
    if hung:  # free the thread before failing: end the pg_dump it waits for
        for tool in child_tools():
            subprocess.run(["kill", tool.split("pid ")[1].rstrip(")")], check=False)
    assert not hung, "the export hung on a full disk"
    assert time.monotonic() - started < 30
    (error,) = outcome
    assert isinstance(error, StorageError) and not error.transient, error
    assert "target primary" in str(error) and "disk is full" in str(error) and "MiB free of" in str(error)
    assert child_tools() == []
    wait_for(lambda: not sessions(world.cluster.dsn(), f"{APP}-r7"), 10, "the export's sessions to end")
    assert not storage.exists(pending_manifest_key(backup_id))
