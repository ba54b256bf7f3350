"""Rotate the master key: re-wrap every retained backup's data key under the active master key. Manual only.

Before: put the new key in the password of backup_encryption and move the old one into previous_keys. Then
trigger with dry_run=true (the default) to see which backups and copies would change, and with
dry_run=false to rotate. Only manifests are rewritten (atomically, re-authenticated, then every copy is
verified with the new key alone); data objects are not touched. Interrupted, it resumes where it stopped.
When it has finished, the old key can be removed from previous_keys: every backup restores without it.
A key it needs that the connection does not hold is refused, naming the key id, before anything changes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param
from wedsync_airflow.operators.rotation import RotateKeysOperator

with DAG(
    dag_id="rotate_keys",
    description="Re-wrap every retained backup's data key under the active master key (dry run by default)",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "dry_run": Param(True, type="boolean", title="Dry run", description="true: list what would change"),
        "reason": Param(type="string", minLength=3, title="Reason", description="Why the keys are rotated"),
    },
    render_template_as_native_obj=True,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "execution_timeout": timedelta(hours=12)},
    tags=["wedsync", "keys", "security"],
    doc_md=__doc__,
) as dag:
    RotateKeysOperator(task_id="rotate", dry_run="{{ params.dry_run }}", reason="{{ params.reason }}")
