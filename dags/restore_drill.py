"""Restore drill: prove a backup by restoring it into a scratch database and checking what came back.

Runs after every new verified full backup (the Asset backup_daily_full's commit task emits), weekly
(Sundays 04:00 UTC) on a randomly chosen older backup at a random moment of its point-in-time window, and on
demand (param backup_id, default the newest verified full; target_time for a point-in-time drill).

The scratch database is created through the drill_target connection and dropped at the end, pass or fail.
Every table's row count and content checksum is checked against the manifest, and the policy's validation
queries must return no rows. The result, with the RTO per priority group, is a backup_tests row
(test_type restore_test); a pass sets backup_operations.last_tested; a failure fails the task and alerts.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, Param
from airflow.timetables.trigger import CronTriggerTimetable
from wedsync_airflow.assets import FULL_BACKUP_VERIFIED
from wedsync_airflow.dag_support import target_names
from wedsync_airflow.operators.drill import RestoreDrillOperator
from wedsync_airflow.params import backup_id_param

with DAG(
    dag_id="restore_drill",
    description="Restore a backup into a scratch database, check rows, checksums and invariants, measure the RTO",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 4 * * 0", timezone="UTC"), assets=[FULL_BACKUP_VERIFIED]
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "backup_id": backup_id_param(
            "Backup id",
            "The backup to drill (see backup_operations); empty: the newest verified full backup",
        ),
        "target_time": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$",
            title="Point in time (optional)",
            description="ISO 8601 with a time zone: drill a point-in-time restore of the backup's chain",
        ),
        "from_target": Param(
            None,
            type=["null", "string"],
            enum=[None, *target_names()],
            title="Copy to restore from",
            description="empty: the first healthy copy (damaged copies are skipped, and the drill says so)",
        ),
    },
    render_template_as_native_obj=True,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "execution_timeout": timedelta(hours=6)},
    tags=["wedsync", "restore", "drill"],
    doc_md=__doc__,
) as dag:
    RestoreDrillOperator(
        task_id="drill",
        backup_id="{{ params.backup_id }}",
        target_time="{{ params.target_time }}",
        from_target="{{ params.from_target }}",
    )
