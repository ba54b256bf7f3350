"""Restore the configurations component: what rebuilds the backup system itself. Manual trigger only.

A dry run by default: the plan task finds the backup's configurations on the chosen target (the newest full
backup that has them, or backup_id), authenticates them, checks every object and the configuration tables'
target, and reports names and counts (which connections and variables this Airflow already has: those are
kept as they are). With dry_run=false and confirm='RESTORE CONFIGURATION' the restore task puts the
configuration tables back into target_conn_id (one transaction), sets the missing variables, imports the
missing connections (``airflow connections import`` reading a named pipe: no plaintext file) and writes the
policy to policy_out. Without any Airflow: ``python -m wedsync_backup.configurations restore`` (README).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param
from wedsync_airflow.operators.configurations import PlanConfigurationRestoreOperator, RestoreConfigurationOperator
from wedsync_airflow.params import from_target_param

PARAMS = {
    "backup_id": Param(
        "latest",
        type="string",
        pattern=r"^(latest|[A-Za-z0-9][A-Za-z0-9._:-]*)$",
        title="Backup id",
        description="latest: the newest full backup that has the configurations component; else a backup id",
    ),
    "from_target": from_target_param(),
    "target_conn_id": Param(
        None,
        type=["null", "string"],
        pattern=r"^[A-Za-z0-9_.-]+$",
        title="Configuration tables' database",
        description="Airflow connection of the database the configuration tables go back to (their rows are "
        "replaced); null: the tables are not restored",
    ),
    "policy_out": Param(
        None,
        type=["null", "string"],
        title="Policy file",
        description="Where to write the backed-up policy (e.g. the file WEDSYNC_BACKUP_POLICY names); "
        "null: not written",
    ),
    "dry_run": Param(True, type="boolean", title="Dry run", description="true: report the plan and stop"),
    "confirm": Param(
        "",
        type="string",
        pattern=r"^(RESTORE CONFIGURATION)?$",
        title="Confirmation",
        description="With dry_run=false, type exactly: RESTORE CONFIGURATION",
    ),
}

COMMON = {name: f"{{{{ params.{name} }}}}" for name in PARAMS}

with DAG(
    dag_id="restore_configuration",
    description="Restore the backed-up policy, connections, variables and configuration tables (dry run by default)",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=True,
    default_args={"retries": 0},
    tags=["wedsync", "restore", "disaster-recovery", "configurations"],
    doc_md=__doc__,
) as dag:
    plan = PlanConfigurationRestoreOperator(task_id="plan", **COMMON)
    # the backup the plan checked, even if a newer one lands in between
    restore = RestoreConfigurationOperator(task_id="restore", **{**COMMON, "backup_id": plan.output["backup_id"]})
    plan >> restore
