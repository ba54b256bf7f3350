"""Catalog rebuild: the tracking tables brought back from the repository. Manual trigger only.

For a catalog database that was lost, emptied or damaged. Reads every committed manifest on one target
(from_target), checks its MAC, verifies every copy on every target, and records each backup whose every
copy verifies: its row with the figures, run, creator, reason, 3-2-1 verdict, warnings and retention the
manifest carries, one replica row per target, table statistics and the recovery point. Rows already there
are completed or kept, never duplicated. Backups that cannot be recorded are listed with the reason.
Restore events, drills and the audit log live only in the catalog and are not in the repository.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param
from wedsync_airflow.dag_support import describe_targets, primary_target_name, retry_delay, target_names
from wedsync_airflow.operators.rebuild import RebuildCatalogOperator

with DAG(
    dag_id="catalog_rebuild",
    description="Rebuild the backup catalog's tracking tables from the manifests on one target",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "from_target": Param(
            primary_target_name(),
            enum=target_names(),
            title="Read the manifests from",
            description=f"Any one target of the backup policy: {describe_targets()}",
        ),
    },
    default_args={"retries": 1, "retry_delay": retry_delay()},
    tags=["wedsync", "catalog", "disaster-recovery"],
    doc_md=__doc__,
) as dag:
    RebuildCatalogOperator(task_id="rebuild", from_target="{{ params.from_target }}")
