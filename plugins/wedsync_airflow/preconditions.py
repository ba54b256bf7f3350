"""Tiers whose precondition is missing skip, saying why and what will start them, instead of failing.

A fresh installation has no full backup yet: the incremental tier has no chain to continue. That is not an
error (nothing is at risk that a full backup would not cover), so its run skips and stays green.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowSkipException
from wedsync_backup.manifest import Manifest
from wedsync_backup.policy import Policy
from wedsync_backup.repository import committed_manifests

from wedsync_airflow.targets import build_storage

NO_FULL_YET = (
    "No full backup exists yet on the primary target ({url}), so there is no chain for an incremental to "
    "continue: this run skips. The first completed run of backup_daily_full (triggered by ./scripts/run.sh, "
    "by hand, or at its daily schedule) starts the chain; the next backup_hourly_incremental run continues it."
)


def skip_until_first_full(policy: Policy) -> None:
    """Raise AirflowSkipException when the primary holds no committed full backup."""
    storage = build_storage(policy.primary)
    if not any(m.backup_type == "full" for m in committed_manifests(storage)):
        raise AirflowSkipException(NO_FULL_YET.format(url=storage.url()))


def completion_summary(manifest: Manifest, copies: int) -> str:
    """The commit log line: tables and rows for a full backup, changes and transactions for an incremental."""
    m = manifest
    if m.backup_type == "incremental":
        x = m.extra
        what = (
            f"{x.get('changes', 0)} changes in {x.get('transactions', 0)} transactions"
            f" (LSN {x.get('start_lsn')} -> {x.get('end_lsn')})"
        )
        if x.get("closes_chain"):
            what += ", closing the chain of its full backup"
    else:
        what = f"{len(m.tables)} tables, {m.total_rows} rows"
    return f"Backup {m.backup_id} completed: {what}, {m.stored_bytes} bytes stored x {copies} verified copies"
