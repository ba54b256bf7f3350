"""RPO watchdog (every 5 minutes): is every tier's newest verified recovery point within its objective?

Objectives are the policy's ``rpo`` section (incremental 1 h, full 24 h, archive 7 days by default). A breach
is recorded in the catalog table ``rpo_breaches`` and alerted once, when it opens; its end is announced too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG
from wedsync_airflow.operators.watchdog import RpoWatchdogOperator

with DAG(
    dag_id="backup_rpo_watchdog",
    description="Every 5 minutes: each tier's newest verified recovery point against its RPO; alert breaches",
    schedule="*/5 * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "execution_timeout": timedelta(minutes=4)},
    tags=["wedsync", "monitoring", "rpo"],
    doc_md=__doc__,
) as dag:
    RpoWatchdogOperator(task_id="check_rpo")
