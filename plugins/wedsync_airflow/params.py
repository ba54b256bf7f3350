"""Params shared by the DAGs that prove backups (JSON schema, validated before a run starts)."""

from __future__ import annotations

from airflow.sdk import Param

from wedsync_airflow.dag_support import describe_targets, primary_target_name, target_names

BACKUP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"


def backup_id_param(title: str, description: str) -> Param:
    """An optional backup id (null: the DAG chooses), shaped like every backup id."""
    return Param(None, type=["null", "string"], pattern=BACKUP_ID_PATTERN, title=title, description=description)


def from_target_param(title: str = "Restore from", description: str = "Which copy to read") -> Param:
    """The copy to read, one of the backup policy's targets (default: the primary)."""
    return Param(
        primary_target_name(),
        enum=target_names(),
        title=title,
        description=f"{description} (the backup policy's targets): {describe_targets()}",
    )
