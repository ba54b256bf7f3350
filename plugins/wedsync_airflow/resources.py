"""Airflow -> core commands: the resources a command needs, built from Airflow connections, and the run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from wedsync_backup.commands.resources import Resources, RunRef
from wedsync_backup.policy import Policy, TargetPolicy
from wedsync_backup.storage.base import Storage

from wedsync_airflow.connections import catalog, keyring, pg_target
from wedsync_airflow.targets import build_storage


def airflow_resources(policy: Policy) -> Resources:
    """Storages through the provider hooks, databases and keys from connections; each built when needed.

    A storage is built once per task (its connection read, its client made) and reused by every phase the
    task runs: building one costs up to a second on a busy machine."""
    storages: dict[str, Storage] = {}

    def open_storage(target: TargetPolicy) -> Storage:
        if target.name not in storages:
            storages[target.name] = build_storage(target)
        return storages[target.name]

    return Resources(
        policy=policy,
        open_storage=open_storage,
        open_catalog=lambda: catalog(policy),
        open_database=pg_target,
        open_keyring=keyring,
    )


def run_ref(context: Any) -> RunRef:
    """The DAG run a task works for; its backup id comes from the run id and the moment it was due."""
    dag_run = context["dag_run"]
    at = getattr(dag_run, "run_after", None) or getattr(dag_run, "logical_date", None) or datetime.now(UTC)
    triggered_by = getattr(dag_run, "triggering_user_name", None) or getattr(dag_run, "run_type", "") or "unknown"
    return RunRef(context["ti"].dag_id, str(dag_run.run_id), at, triggered_by=str(triggered_by))
