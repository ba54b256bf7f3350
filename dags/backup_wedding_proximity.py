"""Wedding proximity tier: weddings near their date backed up from ONE snapshot, a bundle per batch.

Wakes every ``weddings.wedding_day_rpo_minutes`` (5) minutes and backs up the weddings that are due: those
within ``weddings.proximity_days`` of their date (in ``weddings.time_zone``) every
``weddings.frequency_minutes`` (15), those in their execution phase (the day before and the day itself) every
5 minutes, and those a wedding_backup_settings row brings forward. With nothing due the run skips at once.

begin (due weddings, one catalog row, the snapshot held) -> export_batch (mapped over batches of
``weddings.batch_size`` weddings) -> seal -> replicate (mapped) -> verify (every copy, mapped) -> commit -> prune.
Any failure marks the row failed and releases the snapshot: a wedding backup counts only when every copy is
verified.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG
from wedsync_airflow.assets import WEDDING_BACKUP_VERIFIED
from wedsync_airflow.dag_support import wedding_tick_minutes
from wedsync_airflow.operators.wedding import WeddingBeginOperator
from wedsync_airflow.wedding_tasks import wedding_backup_chain, wedding_default_args

with DAG(
    dag_id="backup_wedding_proximity",
    description="Weddings near their date: every 15 minutes (5 on the day), one snapshot, verified copies",
    schedule=f"*/{wedding_tick_minutes()} * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=wedding_default_args(),
    tags=["wedsync", "backup", "tier:wedding"],
    doc_md=__doc__,
) as dag:
    begin = WeddingBeginOperator(task_id="begin")
    wedding_backup_chain(begin, outlets=[WEDDING_BACKUP_VERIFIED])
