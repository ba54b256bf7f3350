"""The task chain both wedding DAGs share, after their begin task (parse-time only: no database, no network).

begin -> export_batch (mapped over batches of weddings, never per wedding) -> seal -> replicate (mapped per
replica) -> verify (mapped per target) -> commit -> prune; mark_failed when anything failed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import TriggerRule

from wedsync_airflow.dag_support import backup_default_args, target_names
from wedsync_airflow.operators.backup import CommitBackupOperator, PruneOperator, ReplicateOperator, VerifyOperator
from wedsync_airflow.operators.wedding import (
    MarkWeddingBackupFailedOperator,
    WeddingBatchOperator,
    WeddingBeginOperator,
    WeddingSealOperator,
)


def wedding_default_args() -> dict[str, Any]:
    """Both wedding DAGs: retried quickly (a wedding's pace is minutes), alerted, bounded."""
    return backup_default_args(
        retries=2,
        first_retry_seconds=30,
        max_retry_delay=timedelta(minutes=5),
        execution_timeout=timedelta(minutes=30),
    )


def wedding_backup_chain(begin: WeddingBeginOperator, *, outlets: list | None = None) -> None:
    backup_id = begin.output["backup_id"]
    export = WeddingBatchOperator.partial(task_id="export_batch", backup_id=backup_id).expand(batch_no=begin.output)
    seal = WeddingSealOperator(task_id="seal", backup_id=backup_id)
    sha = seal.output["manifest_sha256"]
    replicate = ReplicateOperator.partial(task_id="replicate", backup_id=backup_id, manifest_sha256=sha).expand(
        target_name=target_names(replicas_only=True)
    )
    verify = VerifyOperator.partial(task_id="verify", backup_id=backup_id, manifest_sha256=sha).expand(
        target_name=target_names()
    )
    commit = CommitBackupOperator(
        task_id="commit",
        backup_id=backup_id,
        manifest_sha256=sha,
        verifications=verify.output,
        tier="wedding",
        outlets=outlets or [],
    )
    prune = PruneOperator(task_id="prune", backup_type="wedding", tier="wedding")
    # by template, not XComArg: when begin fails there is no backup_id (see backup_daily_full)
    mark_failed = MarkWeddingBackupFailedOperator(
        task_id="mark_failed",
        backup_id="{{ ti.xcom_pull(task_ids='begin', key='backup_id') }}",
        trigger_rule=TriggerRule.ONE_FAILED,
        retries=0,
    )
    export >> seal >> replicate >> verify
    commit >> prune
    [begin, export, seal, replicate, verify, commit] >> mark_failed
