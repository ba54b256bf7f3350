"""The environment an Airflow process of the local stack runs with: config, connections, buckets.

Everything is passed by environment variables (AIRFLOW__..., AIRFLOW_CONN_...), exactly as in production.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devstack.postgres import Cluster
from devstack.services import GcsEmulator, MotoServer

REPO = Path(__file__).resolve().parents[1]
ADMIN_USER = "admin"
RESTORE_TARGET = "restore_target"  # the empty database (and its connection id) the README's restore example uses
# How long the scheduler sleeps after a loop that found nothing to do (Airflow's default: 1 s). A task whose
# upstream has just finished waits for the next loop, so each dependent task started up to 1 s late; at 0.25 s
# a one-wedding restore (plan -> restore) is about 0.6 s shorter. Cost measured on 2 CPUs, idle stack:
# the scheduler 2.0% -> 6.0% of a core, PostgreSQL 1.4% -> 2.8% (0.1 s: 14% and 5.6%).
SCHEDULER_IDLE_SLEEP_TIME = "0.25"


def sizing(cores: int | None = None, parallelism: int | None = None) -> dict[str, str]:
    """Airflow sized for a small machine: task slots in proportion to the cores, one process per service.

    Airflow's defaults (32 task slots, each a pre-forked LocalExecutor worker, several api-server and
    parsing processes) are made for a server. Here: 2 task slots per core (at least 4), which is also the
    number of LocalExecutor workers and the Celery concurrency; one api-server worker; one parsing process.
    ``--parallelism N`` (or WEDSYNC_STACK_PARALLELISM) overrides the slots.
    """
    cores = cores or os.cpu_count() or 2
    slots = parallelism or max(4, 2 * cores)
    return {
        "AIRFLOW__CORE__PARALLELISM": str(slots),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(slots),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(slots),
        "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": str(slots),
    }


def pg_conn_json(cluster: Cluster, dbname: str) -> str:
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": cluster.port,
            "login": cluster.user,
            "schema": dbname,
        }
    )


@dataclass
class StackConfig:
    home: Path
    cluster: Cluster
    s3: MotoServer
    gcs: GcsEmulator
    primary_path: Path
    master_key: str
    s3_bucket: str = "wedsync-backups"
    gcs_bucket: str = "wedsync-backups-offsite"
    source_db: str = "wedsync"
    catalog_db: str = "backup_catalog"
    airflow_db: str = "airflow"
    admin_password: str = "admin"
    executor: str = "LocalExecutor"
    broker_url: str | None = None
    dags_paused_at_creation: bool = True
    files_bucket: str | None = None  # the platform's files bucket (photos, documents); None: files component off

    def connections(self) -> dict[str, str]:
        return {
            "WEDSYNC_SOURCE": pg_conn_json(self.cluster, self.source_db),
            "BACKUP_CATALOG": pg_conn_json(self.cluster, self.catalog_db),
            "BACKUP_PRIMARY": json.dumps({"conn_type": "fs", "extra": {"path": str(self.primary_path)}}),
            "BACKUP_SECONDARY_S3": self.s3.airflow_conn_json(),
            "BACKUP_OFFSITE_GCS": self.gcs.airflow_conn_json(),
            "BACKUP_ENCRYPTION": json.dumps({"conn_type": "generic", "password": self.master_key}),
            RESTORE_TARGET.upper(): pg_conn_json(self.cluster, RESTORE_TARGET),
            "DRILL_TARGET": pg_conn_json(self.cluster, "postgres"),  # restore drills create scratch databases here
            **({"WEDSYNC_FILES": self.s3.airflow_conn_json()} if self.files_bucket else {}),
        }

    def env(self, extra_connections: dict[str, str] | None = None) -> dict[str, str]:
        self.home.mkdir(parents=True, exist_ok=True)
        passwords = self.home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({ADMIN_USER: self.admin_password}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "WEDSYNC_BACKUP_"))}
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=self.cluster.url(self.airflow_db, "postgresql+psycopg2"),
            AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR=self.executor,
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=str(self.dags_paused_at_creation),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{ADMIN_USER}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
            AIRFLOW__API_AUTH__JWT_SECRET="wedsync-local-stack-only",
            AIRFLOW__CORE__FERNET_KEY="",
            AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
            AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
            AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=SCHEDULER_IDLE_SLEEP_TIME,
            WEDSYNC_BACKUP_S3_BUCKET=self.s3_bucket,
            WEDSYNC_BACKUP_GCS_BUCKET=self.gcs_bucket,
            WEDSYNC_PG_BINDIR=str(self.cluster.bindir),
            PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
            **self.gcs.env(),
        )
        if self.files_bucket:
            env["WEDSYNC_FILES_BUCKET"] = self.files_bucket
        if self.broker_url:
            env["AIRFLOW__CELERY__BROKER_URL"] = self.broker_url
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + self.cluster.url(self.airflow_db, "postgresql")
            env["AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER"] = "1"
        for conn_id, value in {**self.connections(), **(extra_connections or {})}.items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = value
        return env

    def create_databases(self) -> None:
        existing = set(self.cluster.psql("-Atc", "SELECT datname FROM pg_database").split())
        for db in (self.source_db, self.catalog_db, self.airflow_db, RESTORE_TARGET):
            if db not in existing:
                self.cluster.create_database(db)

    def create_buckets(self) -> None:
        self.s3.create_bucket(self.s3_bucket)
        self.gcs.create_bucket(self.gcs_bucket)
        if self.files_bucket:
            self.s3.create_bucket(self.files_bucket)


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def migrate_metadata(env: dict[str, str]) -> None:
    subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, capture_output=True)
