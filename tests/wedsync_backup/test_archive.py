"""The weekly archive on real targets: storage class and retention lock read back through the provider hooks,
every copy verified, recorded as a recovery point, and restorable (as the latest point and by id).

What the servers cannot show: gcp-storage-emulator keeps the storage class given at upload, but ignores
object holds and retention (a temporary hold is accepted and not stored; a held object can be deleted), so
the GCS lock is not asserted here. moto keeps S3 storage classes and Object Lock (GOVERNANCE) and refuses to
delete a locked version.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta

import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.google.cloud.hooks.gcs import GCSHook
from botocore.exceptions import ClientError
from wedsync_airflow.targets import build_targets
from wedsync_backup.archive import archive_setup, prune_archives, run_archive
from wedsync_backup.assurance_policy import load_assurance
from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError
from wedsync_backup.export import ExportOptions
from wedsync_backup.pitr import plan_chain
from wedsync_backup.policy import load_policy
from wedsync_backup.repository import committed_manifests
from wedsync_backup.restore import restore_backup

from devstack.postgres import Cluster
from devstack.services import GcsEmulator, MotoServer
from tests.fixtures.airflow import assert_same_database
from tests.fixtures.storage import StorageTargets, set_storage_env, unique_bucket
from tests.wedsync_backup.test_export import pg_target, source_db  # noqa: F401 - fixture

RING = Keyring(os.urandom(32))


@pytest.fixture
def locked_targets(
    s3_server: MotoServer, gcs_server: GcsEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> StorageTargets:
    """Fresh targets whose S3 bucket has Object Lock enabled (it can only be enabled at creation)."""
    s3_bucket, gcs_bucket = unique_bucket("s3"), unique_bucket("gcs")
    s3_server.client().create_bucket(Bucket=s3_bucket, ObjectLockEnabledForBucket=True)
    gcs_server.create_bucket(gcs_bucket)
    set_storage_env(monkeypatch, s3_server, gcs_server, tmp_path / "backups", s3_bucket, gcs_bucket)
    return StorageTargets(*build_targets(load_policy()))


def test_the_weekly_archive_is_classed_locked_verified_recorded_and_restores(
    locked_targets: StorageTargets,
    module_catalog: Catalog,
    pg_cluster: Cluster,
    source_db: str,  # noqa: F811
    empty_db: str,
) -> None:
    policy, archive = load_policy(), load_assurance().archive
    verdict, warnings = archive_setup(policy, archive)
    assert verdict.compliant and not warnings
    now = datetime.now(UTC)
    result = run_archive(
        module_catalog,
        pg_target(pg_cluster, source_db),
        list(locked_targets),
        RING,
        backup_id="archive-20261129T030000Z-test",
        archive=archive,
        options=ExportOptions(workers=2, priority_of=policy.priority_of),
        verdict=verdict,
        warnings=warnings,
        now=now,
        actor="pytest",
    )
    backup_id = result["backup_id"]
    assert result["source"] == "own export"
    assert result["targets"]["secondary"] == "class GLACIER_IR, lock Object Lock GOVERNANCE"

    s3, gcs = locked_targets.secondary, locked_targets.offsite
    keys = [o.key for o in s3.list(f"backups/{backup_id}/")]
    assert len(keys) >= 3 and any(k.endswith("manifest.json") for k in keys)
    client = S3Hook(aws_conn_id=s3.conn_id).get_conn()
    until = now + timedelta(days=365)
    for key in keys:
        head = client.head_object(Bucket=s3.bucket, Key=s3._full(key))
        assert head["StorageClass"] == "GLACIER_IR" and head["ObjectLockMode"] == "GOVERNANCE"
        assert abs(head["ObjectLockRetainUntilDate"] - until) < timedelta(minutes=5)
    versions = client.list_object_versions(Bucket=s3.bucket, Prefix=s3._full(keys[0]))["Versions"]
    assert len(versions) == 1  # the unlocked first upload is gone
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=s3.bucket, Key=s3._full(keys[0]), VersionId=versions[0]["VersionId"])
    bucket = GCSHook(gcp_conn_id=gcs.conn_id).get_conn().bucket(gcs.bucket)
    blobs = [bucket.get_blob(gcs._full(k)) for k in (o.key for o in gcs.list(f"backups/{backup_id}/"))]
    assert len(blobs) == len(keys) and {b.storage_class for b in blobs} == {"ARCHIVE"}

    row = module_catalog.get_backup(backup_id)
    assert row["backup_type"] == "archive" and row["status"] == "completed" and row["integrity_verified"]
    assert abs(row["retention_until"] - until) < timedelta(minutes=5)
    assert {r["target_name"] for r in row["replicas"] if r["verified"]} == {"primary", "secondary", "offsite"}
    assert row["recovery_point"]["chain"] == [backup_id]

    # a point from the archive restores: it is the latest point on the offsite copy
    chain = plan_chain(committed_manifests(gcs), None)
    assert chain.full.backup_id == backup_id and chain.full.backup_type == "archive"
    restore_backup(chain.full, gcs, RING, pg_target(pg_cluster, empty_db, "restore_target"))
    assert_same_database(pg_cluster, source_db, empty_db)

    # retention: kept until its year is over (and never the newest archive)
    assert prune_archives(module_catalog, [locked_targets.primary], retention_days=365, now=now) == {"primary": []}


def test_archive_classes_that_cannot_be_read_directly_are_refused() -> None:
    policy, archive = load_policy(env={}), load_assurance(env={}).archive
    deep = dataclasses.replace(archive, storage_class={"secondary": "DEEP_ARCHIVE"})
    with pytest.raises(ConfigError, match=r"DEEP_ARCHIVE is not usable on target secondary.*restore request"):
        archive_setup(policy, deep)
    two = dataclasses.replace(archive, targets=("primary", "secondary"))
    with pytest.raises(ConfigError, match=r"3-2-1.*2 copies, the rule needs 3"):
        archive_setup(policy, two)
