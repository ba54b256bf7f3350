"""Scrub (daily 05:00 UTC): re-verify retained backups on every target, repair damaged copies.

Every retained copy is re-read at least once per ``scrub.cycle_days`` (size, sha256, decryption on read of
every object, and the manifest byte for byte), at most ``scrub.daily_budget_mb`` a day, copies checked
longest ago first. A damaged or missing copy is repaired from a copy that verifies (ciphertext copied, then
verified again) and the repair alerts; a backup with no intact copy is marked damaged and alerts loudly.
Each check is a backup_tests row (test_type integrity_check). Param backup_id: scrub only that backup now.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG
from wedsync_airflow.operators.scrub import ScrubOperator
from wedsync_airflow.params import backup_id_param

with DAG(
    dag_id="backup_scrub",
    description="Re-verify retained copies within a daily budget; repair damaged ones; mark and alert damage",
    schedule="0 5 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "backup_id": backup_id_param(
            "Backup id (optional)",
            "Scrub only this backup, now, whatever the cycle; empty: today's share of all of them",
        ),
    },
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "execution_timeout": timedelta(hours=12)},
    tags=["wedsync", "scrub", "integrity"],
    doc_md=__doc__,
) as dag:
    ScrubOperator(task_id="scrub", backup_id="{{ params.backup_id }}")
