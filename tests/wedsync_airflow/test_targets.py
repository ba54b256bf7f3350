"""Targets are built from Airflow connections through the real provider hooks."""

from __future__ import annotations

import json

import pytest
from wedsync_airflow.targets import build_storage, build_targets
from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import Policy, TargetPolicy
from wedsync_backup.storage import GCSStorage, LocalStorage, S3Storage

from tests.fixtures.storage import StorageTargets


def test_build_targets_in_policy_order(storage_targets: StorageTargets, storage_policy: Policy) -> None:
    primary, secondary, offsite = storage_targets
    assert isinstance(primary, LocalStorage)
    assert isinstance(secondary, S3Storage)
    assert isinstance(offsite, GCSStorage)
    assert [t.name for t in storage_targets] == ["primary", "secondary", "offsite"]
    assert (secondary.medium, secondary.site) == ("object-storage", "aws-eu-west-1")
    assert secondary.bucket == storage_policy.target("secondary").bucket
    assert secondary.url("k") == f"s3://{secondary.bucket}/wedsync/k"
    assert offsite.url("k") == f"gs://{offsite.bucket}/wedsync/k"
    for t in storage_targets:
        t.check()  # every hook-built client really reaches its server


def test_targets_share_nothing_across_kinds(storage_targets: StorageTargets) -> None:
    """What one target stores is not visible in another: they are independent copies."""
    storage_targets.primary.put_bytes("only-here", b"x")
    assert storage_targets.secondary.size("only-here") is None
    assert storage_targets.offsite.size("only-here") is None


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("primary", "AIRFLOW_CONN_BACKUP_PRIMARY"),
        ("secondary", "AIRFLOW_CONN_BACKUP_SECONDARY_S3"),
        ("offsite", "AIRFLOW_CONN_BACKUP_OFFSITE_GCS"),
    ],
)
def test_undefined_connection_is_a_config_error(
    storage_policy: Policy, monkeypatch: pytest.MonkeyPatch, name: str, env: str
) -> None:
    monkeypatch.delenv(env)
    target = storage_policy.target(name)
    with pytest.raises(ConfigError) as e:
        build_storage(target)
    msg = str(e.value)
    assert f"Airflow connection '{target.conn_id}' (target {name}) is not defined" in msg
    assert f"set {env}" in msg
    assert "Admin -> Connections" in msg


def test_undefined_connection_stops_build_targets(storage_policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_BACKUP_SECONDARY_S3")
    with pytest.raises(ConfigError, match="backup_secondary_s3"):
        build_targets(storage_policy)


def test_local_connection_without_path(storage_policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_PRIMARY", json.dumps({"conn_type": "fs", "extra": {}}))
    with pytest.raises(ConfigError, match=r"backup_primary.*no 'path'"):
        build_storage(storage_policy.target("primary"))


def test_unknown_kind_is_a_config_error() -> None:
    t = TargetPolicy(name="tape", kind="tape", conn_id="c", medium="tape", site="vault")
    with pytest.raises(ConfigError, match="unknown kind 'tape'"):
        build_storage(t)


def test_undefined_database_connection_names_its_role(storage_policy: Policy) -> None:
    from wedsync_airflow.connections import pg_target

    with pytest.raises(ConfigError) as e:
        pg_target("restore_db_missing", "restore target")
    assert "Airflow connection 'restore_db_missing' (restore target) is not defined" in str(e.value)
