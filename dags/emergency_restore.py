"""Emergency restore: bring a backup back into an empty database, or chosen weddings or tables back into a live
one (scopes wedding-only and selective: commands/partial_restore.py). Manual trigger only.

Runs as a dry run by default: the plan task checks everything (parameters, confirmation, the backup's
manifest and key, every object on the chosen target, the target database being empty) and reports what
would happen, touching nothing. To restore, trigger with dry_run=false and confirm='RESTORE <target_conn_id>'.
A restore is all or nothing: on any failure the target is put back as it was. A restore killed outright (SIGKILL,
out of memory, its node lost) cannot do that itself: its retry clears what it left first, and when its last try
dies, the put_back task (a fresh task process, run only then) puts the target back as it was, if, and only if, it
carries the mark of this run's restore. The run still ends failed.

The files (components files): restore_files writes them back after the database. For scope wedding-only the
restore task brings the weddings' few files back itself, right after their rows, and skips restore_files (its log
and result say what was written or found in place); restore_files runs only if that step failed.

Where bad input is refused: each parameter alone by its JSON schema below (UI form, REST API and CLI, before
a run exists); the combinations (confirm with dry_run=false, target_time for point_in_time, backup_id for
backup_id) by the api-server (plugins/wedsync_restore_guard.py: UI form and REST API, before a run exists)
and again by the plan task (every trigger, including the CLI, before anything is touched).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, TriggerRule
from wedsync_airflow.dag_support import retry_delay
from wedsync_airflow.notifiers import alert_on
from wedsync_airflow.operators.files import RestoreFilesOperator
from wedsync_airflow.operators.restore import PlanRestoreOperator, PutBackOperator, RestoreOperator
from wedsync_airflow.params import from_target_param

PARAMS = {
    "mode": Param(
        "latest",
        enum=["latest", "point_in_time", "backup_id"],
        title="Mode",
        description="latest: the newest full backup plus every incremental after it; point_in_time: the "
        "database as it was at target_time; backup_id: exactly the backup named below",
    ),
    "target_time": Param(
        None,
        type=["null", "string"],
        title="Target time (point_in_time)",
        description="ISO 8601 with a time zone, e.g. 2026-11-21T14:30:00Z: restore the last transaction "
        "committed at or before it",
        pattern=r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$",
    ),
    "recovery_point": Param(
        None,
        type=["null", "string"],
        maxLength=200,
        title="Named recovery point (point_in_time)",
        description="Instead of target_time: the label of a named recovery point, e.g. before the guest import",
    ),
    "backup_id": Param(
        None,
        type=["null", "string"],
        title="Backup id",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="Required when mode is backup_id (see the backup_operations table)",
    ),
    "scope": Param(
        "complete",
        enum=["complete", "wedding-only", "selective"],
        title="Scope",
        description="complete: the whole database into an empty one; wedding-only: the weddings named below back "
        "INTO a live database (the source itself may be the target); selective: the tables named below",
    ),
    "wedding_ids": Param(
        None,
        type=["null", "array"],
        items={"type": "string", "pattern": r"^[^\s,]+$"},
        title="Wedding ids (wedding-only)",
        description="The weddings to bring back (the wedding table's key), one per line",
    ),
    "data_types": Param(
        None,
        type=["null", "array"],
        items={"type": "string"},
        title="Data types (wedding-only)",
        description="Only these kinds of a wedding's data (the policy's weddings.data_types, e.g. guests, "
        "timeline); empty: the whole wedding",
    ),
    "tables": Param(
        None,
        type=["null", "array"],
        items={"type": "string", "minLength": 1},
        title="Tables (selective)",
        description="The tables to bring back whole, as schema.table, one per line",
    ),
    "into_schema": Param(
        None,
        type=["null", "string"],
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        title="Into a new schema (selective)",
        description="Load the tables into this NEW schema for inspection; the live tables stay untouched",
    ),
    "from_target": from_target_param(),
    "target_conn_id": Param(
        type="string",
        minLength=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        title="Target connection id",
        description="Airflow connection of the EMPTY database to restore into (scope complete), or of the live "
        "database to bring weddings or tables back into (wedding-only, selective)",
    ),
    "components": Param(
        ["database", "files"],
        type="array",
        items={"type": "string", "enum": ["database", "files"]},
        minItems=1,
        uniqueItems=True,
        title="Components",
        description="database: the tables; files: the photos and documents as they were at the same point",
    ),
    "target_files_conn_id": Param(
        None,
        type=["null", "string"],
        pattern=r"^[A-Za-z0-9_.-]+$",
        title="Files target connection (files)",
        description="aws connection of the bucket to write the files into (default: the policy's wedsync_files)",
    ),
    "target_files_bucket": Param(
        None,
        type=["null", "string"],
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        title="Files target bucket (files)",
        description="Bucket to write the files into (default: the policy's files.bucket); objects already there "
        "with the right checksum are skipped",
    ),
    "dry_run": Param(True, type="boolean", title="Dry run", description="true: report the plan and stop"),
    "confirm": Param(
        "",
        type="string",
        title="Confirmation",
        description="With dry_run=false, type exactly: RESTORE <target_conn_id>",
        pattern=r"^(RESTORE [A-Za-z0-9_.-]+)?$",
    ),
    "reason": Param(
        type="string",
        minLength=3,
        pattern=r"\S.*\S.*\S",
        title="Reason",
        description="Required: why this restore is run, at least 3 characters (recorded), e.g. INC-42",
    ),
}

COMMON = {
    "mode": "{{ params.mode }}",
    "backup_id": "{{ params.backup_id }}",
    "scope": "{{ params.scope }}",
    "from_target": "{{ params.from_target }}",
    "target_conn_id": "{{ params.target_conn_id }}",
    "dry_run": "{{ params.dry_run }}",
    "confirm": "{{ params.confirm }}",
    "reason": "{{ params.reason }}",
    "target_time": "{{ params.target_time }}",
    "recovery_point": "{{ params.recovery_point }}",
    "wedding_ids": "{{ params.wedding_ids }}",
    "data_types": "{{ params.data_types }}",
    "tables": "{{ params.tables }}",
    "into_schema": "{{ params.into_schema }}",
    "components": "{{ params.components }}",
}
FILES_TARGET = {
    "target_files_conn_id": "{{ params.target_files_conn_id }}",
    "target_files_bucket": "{{ params.target_files_bucket }}",
}

with DAG(
    dag_id="emergency_restore",
    description="Restore a backup into an empty database (dry run by default; confirm to apply)",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=True,
    default_args={"retries": 1, "retry_delay": retry_delay()},
    tags=["wedsync", "restore", "disaster-recovery"],
    doc_md=__doc__,
) as dag:
    plan = PlanRestoreOperator(task_id="plan", retries=0, **COMMON)
    restore = RestoreOperator(
        task_id="restore",
        plan=plan.output,
        event_id=plan.output["event_id"],
        on_execute_callback=alert_on("restore_started"),
        on_success_callback=alert_on("restore_finished"),
        on_failure_callback=alert_on("restore_failed"),
        **FILES_TARGET,  # wedding-only: the weddings' files are restored here too, and restore_files skipped
        **COMMON,
    )
    restore_files = RestoreFilesOperator(
        task_id="restore_files",
        **FILES_TARGET,
        trigger_rule=TriggerRule.NONE_FAILED,  # after the database (restored, skipped as a dry run, or left out)
        **COMMON,
    )
    # After the restore's last try failed (scope complete): what a killed restore left half-loaded goes. Pulled
    # by template, not XComArg: when plan failed there is no event_id, and an XComArg would fail this task too.
    put_back = PutBackOperator(
        task_id="put_back",
        plan="{{ ti.xcom_pull(task_ids='plan') }}",
        event_id="{{ ti.xcom_pull(task_ids='plan', key='event_id') }}",
        trigger_rule=TriggerRule.ONE_FAILED,
        **COMMON,
    )
    plan >> restore >> restore_files
    restore >> put_back  # the run's state stays restore's: restore_files, a leaf too, is then upstream_failed
