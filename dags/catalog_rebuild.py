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

from airflow.sdk import DAG
from wedsync_airflow.dag_support import retry_delay
from wedsync_airflow.operators.rebuild import RebuildCatalogOperator
from wedsync_airflow.params import from_target_param

with DAG(
    dag_id="catalog_rebuild",
    description="Rebuild the backup catalog's tracking tables from the manifests on one target",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "from_target": from_target_param("Read the manifests from", "Any one target"),
    },
    default_args={"retries": 1, "retry_delay": retry_delay()},
    tags=["wedsync", "catalog", "disaster-recovery"],
    doc_md=__doc__,
) as dag:
    RebuildCatalogOperator(task_id="rebuild", from_target="{{ params.from_target }}")
