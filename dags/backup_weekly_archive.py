"""Weekly offsite archive (Sundays 03:00 UTC): a recovery point kept 365 days in archive storage.

archive: its own export (backup type archive), copied to the policy's archive targets, each in its archive
storage class (GCS ARCHIVE, S3 GLACIER_IR), locked until its retention ends where the bucket supports it
(S3 Object Lock GOVERNANCE, GCS hold), every copy verified, manifest committed, catalog row and recovery
point written. Its copies must meet the archive's own 3-2-1 rule. -> prune: archives past their year go.
Restores, drills and the recovery-point list include archives. A failure marks the row failed and alerts.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG
from wedsync_airflow.dag_support import backup_default_args
from wedsync_airflow.operators.archive import PruneArchivesOperator, WeeklyArchiveOperator

with DAG(
    dag_id="backup_weekly_archive",
    description="Weekly archive: own export, archive storage class and lock, 3-2-1, verified, kept 365 days",
    schedule="0 3 * * 0",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=backup_default_args(retries=2, execution_timeout=timedelta(hours=8)),
    tags=["wedsync", "backup", "tier:archive"],
    doc_md=__doc__,
) as dag:
    WeeklyArchiveOperator(task_id="archive") >> PruneArchivesOperator(task_id="prune")
