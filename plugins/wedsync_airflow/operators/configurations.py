"""Adapters for restore_configuration (a full backup stores the component: operators/backup.py FullBackupOperator).

The connections and variables are read (and written back) through Airflow here; the core commands in
``wedsync_backup.configurations`` get them as plain data and never see Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from airflow.sdk import Variable
from airflow.sdk.exceptions import AirflowSkipException
from wedsync_backup.configurations import restore as cmd
from wedsync_backup.errors import ConfigError

from wedsync_airflow.configurations import is_defined
from wedsync_airflow.operators.command import CommandOperator


def airflow_cli() -> str:
    beside = Path(sys.executable).with_name("airflow")
    return str(beside) if beside.exists() else (shutil.which("airflow") or "airflow")


class AirflowImporter:
    """Variables through the Task SDK; connections through ``airflow connections import`` reading a named
    pipe (the plaintext never lands on disk). Neither overwrites what this Airflow already has."""

    def is_defined(self, kind: str, name: str) -> bool:
        return is_defined(kind, name)

    def import_variables(self, variables: dict[str, Any]) -> list[str]:
        done = []
        for key, value in variables.items():
            if not is_defined("variable", key):
                Variable.set(key, value)
                done.append(key)
        return done

    def import_connections(self, connections_json: bytes) -> list[str]:
        wanted = {k: v for k, v in json.loads(connections_json).items() if not is_defined("connection", k)}
        if not wanted:  # (the CLI would only see the metadata database, not env or secrets-backend connections)
            return []
        payload = json.dumps(wanted).encode()
        with tempfile.TemporaryDirectory(prefix="wedsync-config-") as d:  # 0700
            pipe = os.path.join(d, "connections.json")
            os.mkfifo(pipe, 0o600)
            feeder = threading.Thread(target=_feed, args=(pipe, payload), daemon=True)
            feeder.start()
            proc = subprocess.run(
                [airflow_cli(), "connections", "import", pipe], capture_output=True, text=True, timeout=600
            )
            if feeder.is_alive():  # the CLI never opened the pipe: release the feeder
                fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
                feeder.join(5)
                os.close(fd)
        if proc.returncode != 0:
            raise ConfigError(
                "airflow connections import failed",
                (proc.stderr or proc.stdout).strip()[-800:],
                "run this task where the airflow CLI reaches the metadata database, or restore with "
                "python -m wedsync_backup.configurations restore and import the files by hand",
            )
        return [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("Imported connection ")]


def _feed(pipe: str, data: bytes) -> None:
    try:
        with open(pipe, "wb") as f:
            f.write(data)
    except OSError:
        pass  # the reader went away; the import reports its own failure


class _ConfigurationRestoreBase(CommandOperator):
    template_fields = (
        *CommandOperator.template_fields,
        "backup_id",
        "from_target",
        "target_conn_id",
        "policy_out",
        "dry_run",
        "confirm",
    )

    def __init__(
        self,
        *,
        backup_id: str | None = "latest",
        from_target: str = "primary",
        target_conn_id: str | None = None,
        policy_out: str | None = None,
        dry_run: Any = True,
        confirm: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.from_target = from_target
        self.target_conn_id = target_conn_id
        self.policy_out = policy_out
        self.dry_run = dry_run
        self.confirm = confirm

    def request(self) -> cmd.ConfigurationRestoreRequest:
        return cmd.ConfigurationRestoreRequest(
            backup_id=self.backup_id or "latest",
            from_target=self.from_target,
            target_conn_id=self.target_conn_id or None,
            policy_out=self.policy_out or None,
            dry_run=self.dry_run is not False and str(self.dry_run).lower() != "false",
            confirm=self.confirm or "",
        )


class PlanConfigurationRestoreOperator(_ConfigurationRestoreBase):
    """Checks everything and reports what would be restored (names and counts, never a value). Pushes
    ``backup_id``: the restore task restores exactly the backup planned."""

    def execute(self, context: Any) -> dict[str, Any]:
        plan = self.call(
            lambda: cmd.plan_configuration_restore(self.build_resources(), self.request(), AirflowImporter())
        )
        context["ti"].xcom_push(key="backup_id", value=plan["backup_id"])
        return plan


class RestoreConfigurationOperator(_ConfigurationRestoreBase):
    """With dry_run=false and the confirmation: tables, variables, connections, policy file."""

    def execute(self, context: Any) -> dict[str, Any]:
        req = self.request()
        if req.dry_run:
            raise AirflowSkipException("Dry run: the plan task's result is the report; nothing was restored")
        return self.call(lambda: cmd.apply_configuration_restore(self.build_resources(), req, AirflowImporter()))
