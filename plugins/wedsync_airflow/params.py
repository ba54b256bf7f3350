"""Params shared by the DAGs that prove backups (JSON schema, validated before a run starts)."""

from __future__ import annotations

from airflow.sdk import Param

BACKUP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"


def backup_id_param(title: str, description: str) -> Param:
    """An optional backup id (null: the DAG chooses), shaped like every backup id."""
    return Param(None, type=["null", "string"], pattern=BACKUP_ID_PATTERN, title=title, description=description)
