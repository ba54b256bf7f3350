"""Hourly incremental: every change committed since the previous backup, for point-in-time recovery.

preflight (catalog, targets, 3-2-1, slot safety, which chain, schema changes) -> capture (logical decoding,
to primary) -> replicate (mapped) -> verify (mapped) -> commit -> release_slot (advance, or drop a closed
chain's slot) -> prune (30 days; never what a kept backup depends on). The slot moves only after the
incremental is committed on every target: a failure anywhere loses nothing and a retry repeats the same
capture. Captured schema changes travel in the chain and are replayed in place; at a change that cannot be
replayed exactly the chain ends just before it (its slot is dropped) and a new full backup is triggered.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, TriggerRule
from wedsync_airflow.dag_support import backup_default_args, target_names
from wedsync_airflow.operators.backup import (
    CommitBackupOperator,
    MarkBackupFailedOperator,
    PruneOperator,
    ReplicateOperator,
    VerifyOperator,
)
from wedsync_airflow.operators.incremental import (
    CaptureIncrementalOperator,
    IncrementalPreflightOperator,
    ReleaseSlotOperator,
)


def _chain_ended(plan: dict, ti: Any = None) -> bool:
    """Trigger a full backup when preflight ended the chain, or the capture ended it at a schema change."""
    return plan.get("action") == "end_chain" or bool(ti and ti.xcom_pull(task_ids="capture", key="chain_ended"))


with DAG(
    dag_id="backup_hourly_incremental",
    description="Hourly incremental via logical decoding: point-in-time recovery, RPO <= 1 h",
    schedule="15 * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=backup_default_args(
        retries=3,
        first_retry_seconds=60,
        max_retry_delay=timedelta(minutes=15),
        execution_timeout=timedelta(minutes=50),
    ),
    tags=["wedsync", "backup", "tier:incremental"],
    doc_md=__doc__,
) as dag:
    preflight = IncrementalPreflightOperator(task_id="preflight")
    backup_id = preflight.output["backup_id"]
    capture = CaptureIncrementalOperator(task_id="capture", backup_id=backup_id, plan=preflight.output)
    sha = capture.output["manifest_sha256"]
    replicate = ReplicateOperator.partial(task_id="replicate", backup_id=backup_id, manifest_sha256=sha).expand(
        target_name=target_names(replicas_only=True)
    )
    verify = VerifyOperator.partial(task_id="verify", backup_id=backup_id, manifest_sha256=sha).expand(
        target_name=target_names()
    )
    commit = CommitBackupOperator(
        task_id="commit", backup_id=backup_id, manifest_sha256=sha, verifications=verify.output, tier="incremental"
    )
    release = ReleaseSlotOperator(
        task_id="release_slot", backup_id=backup_id, manifest_sha256=sha, plan=preflight.output
    )
    prune = PruneOperator(task_id="prune", backup_type="incremental", tier="incremental")
    chain_ended = ShortCircuitOperator(
        task_id="chain_ended",
        python_callable=_chain_ended,
        op_args=[preflight.output],
        ignore_downstream_trigger_rules=False,
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,  # after release_slot, or when capture was skipped
    )
    new_full = TriggerDagRunOperator(task_id="trigger_full_backup", trigger_dag_id="backup_daily_full")
    mark_failed = MarkBackupFailedOperator(
        task_id="mark_failed",
        backup_id="{{ ti.xcom_pull(task_ids='preflight', key='backup_id') }}",
        trigger_rule=TriggerRule.ONE_FAILED,
        retries=0,
    )

    capture >> replicate >> verify
    commit >> release >> prune
    preflight >> chain_ended >> new_full
    release >> chain_ended
    [preflight, capture, replicate, verify, commit, release] >> mark_failed
