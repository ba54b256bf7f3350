"""Daily full backup: one consistent snapshot of the whole platform database, three verified copies.

One task, backup: preflight (migrations, 3-2-1, connectivity of the source, the catalog, the key and every
target: nothing is written before it passed), export (to the primary and, at the same time, to every replica),
the configurations component (policy, connections, variables, configuration tables), verify every copy, commit
(manifest on every target, catalog row 'completed'), then prune (30-day retention).
One task: each task boundary costs a task process and a scheduling gap (issue 8, "Speed as the user gets it");
the phases, their order and their rules are those of separate tasks (wedsync_backup.commands.full_backup), and
the task log names each phase.
Any failure marks the catalog row 'failed': a backup counts only when every copy is verified.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, TriggerRule
from wedsync_airflow.assets import FULL_BACKUP_VERIFIED
from wedsync_airflow.dag_support import backup_default_args
from wedsync_airflow.operators.backup import (
    FullBackupOperator,
    MarkBackupFailedOperator,
)

with DAG(
    dag_id="backup_daily_full",
    description="Daily full backup: export, replicate 3-2-1, verify every copy, record, prune (30 days)",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=backup_default_args(
        retries=2, max_retry_delay=timedelta(minutes=30), execution_timeout=timedelta(hours=6)
    ),
    # A run triggered by hand may say why, and be recorded as a manual backup (the console's type manual):
    # a full export all the same, starting a chain (the full tier's prune considers type full only).
    params={
        "backup_type": Param(
            "full", enum=["full", "manual"], title="Backup type", description="manual: a full backup taken by hand"
        ),
        "reason": Param(
            None, type=["null", "string"], maxLength=500, title="Reason", description="Why (recorded in the catalog)"
        ),
    },
    tags=["wedsync", "backup", "tier:full"],
    doc_md=__doc__,
) as dag:
    backup_type, reason = "{{ params.backup_type }}", "{{ params.reason or '' }}"
    # The copies are streamed to every replica during the export (no replicate pass after it); the configurations
    # component joins the backup; then every copy is read back and verified; only then is the backup committed,
    # and only then is retention applied.
    backup = FullBackupOperator(
        task_id="backup", backup_type=backup_type, tier="full", reason=reason, outlets=[FULL_BACKUP_VERIFIED]
    )
    # The run's own backup id, made from the run as the backup task makes it (not an XCom: a retry clears the
    # XComs of the try before, whose row may be open); skipped when the preflight failed before any row.
    mark_failed = MarkBackupFailedOperator(
        task_id="mark_failed", backup_type=backup_type, trigger_rule=TriggerRule.ONE_FAILED, retries=0
    )

    # The run's state is its leaves': this one fails with the backup (mark_failed, a leaf too, succeeds or is
    # skipped when it does). An EmptyOperator is marked done by the scheduler itself, with no task process.
    done = EmptyOperator(task_id="done")
    backup >> done
    backup >> mark_failed
