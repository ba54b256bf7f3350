"""Build the policy's storage targets from Airflow connections, through the provider hooks.

Hooks are created when a target is built (inside a task), never at import time, so parsing a DAG
never touches a connection or the network.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import Policy, TargetPolicy
from wedsync_backup.storage.base import Storage


def get_connection(conn_id: str, role: str) -> Any:
    """The Airflow connection, or a ConfigError saying how to define it. ``role``: e.g. 'source', 'target primary'."""
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException as e:
        raise ConfigError(
            f"Airflow connection '{conn_id}' ({role}) is not defined",
            fix=f"create it in Admin -> Connections or set AIRFLOW_CONN_{conn_id.upper()}",
        ) from e


def _client(target: TargetPolicy, make: Any) -> Any:
    try:
        return make()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"Airflow connection '{target.conn_id}' (target {target.name}) cannot be used",
            f"{type(e).__name__}: {e}",
            "check its credentials and extra fields",
        ) from e


def _local(target: TargetPolicy) -> Storage:
    from wedsync_backup.storage.local import LocalStorage

    conn = get_connection(target.conn_id, f"target {target.name}")
    path = (conn.extra_dejson or {}).get("path")
    if not path:
        raise ConfigError(
            f"Airflow connection '{target.conn_id}' (target {target.name}) has no 'path' in its extra",
            fix='set the extra to {"path": "/var/backups/wedsync"} (conn_type fs)',
        )
    return LocalStorage(path, name=target.name, medium=target.medium, site=target.site, conn_id=target.conn_id)


def _bucket(target: TargetPolicy, make_client: Any, storage_class: type[Storage]) -> Storage:
    # Look the connection up first: without it S3Hook would silently fall back to default credentials.
    get_connection(target.conn_id, f"target {target.name}")
    return storage_class(
        _client(target, make_client),
        target.bucket or "",
        target.prefix,
        name=target.name,
        medium=target.medium,
        site=target.site,
        conn_id=target.conn_id,
    )


def _s3(target: TargetPolicy) -> Storage:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from wedsync_backup.storage.s3 import S3Storage

    return _bucket(target, lambda: S3Hook(aws_conn_id=target.conn_id).get_conn(), S3Storage)


def _gcs(target: TargetPolicy) -> Storage:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook
    from wedsync_backup.storage.gcs import GCSStorage

    return _bucket(target, lambda: GCSHook(gcp_conn_id=target.conn_id).get_conn(), GCSStorage)


_BUILDERS = {"local": _local, "s3": _s3, "gcs": _gcs}


def build_storage(target: TargetPolicy) -> Storage:
    """The Storage for one policy target, with a client built from its Airflow connection now."""
    try:
        builder = _BUILDERS[target.kind]
    except KeyError:
        raise ConfigError(
            f"Backup target '{target.name}' has unknown kind '{target.kind}'",
            fix=f"use one of {', '.join(_BUILDERS)}",
        ) from None
    return builder(target)


def build_targets(policy: Policy) -> list[Storage]:
    """Every target of the policy, in policy order (the first is the primary)."""
    return [build_storage(t) for t in policy.targets]
