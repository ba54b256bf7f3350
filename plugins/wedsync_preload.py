"""Preload, once, what every WedSync task imports: the S3 and GCS provider hooks and the core commands.

The LocalExecutor's workers are forked from the scheduler, each task process from a worker (and a Celery
worker forks its task processes the same way). Modules the parent already holds cost a task nothing, while a
task that imports them itself spends about 2-3 seconds of CPU on it (the GCS hook alone pulls in aiohttp and
two Google clients): seconds on every task boundary of every run (issue 8, "Speed as the user gets it").
Airflow loads every plugin module at start-up; this one imports the modules only in the processes that run
tasks, so the api-server, the dag-processor and the triggerer start as before.
"""

from __future__ import annotations

import importlib
import logging
import sys

from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

PRELOAD = (
    "airflow.providers.amazon.aws.hooks.s3",
    "airflow.providers.google.cloud.hooks.gcs",
    "wedsync_airflow.targets",
    "wedsync_airflow.connections",
    "wedsync_backup.commands.full_backup",
    "wedsync_backup.commands.incremental",
    "wedsync_backup.commands.restore",
)
TASK_RUNNERS = ("scheduler", "worker")  # `airflow scheduler` (LocalExecutor), `airflow celery worker`


def runs_tasks(argv: list[str]) -> bool:
    return len(argv) > 1 and "airflow" in argv[0] and any(a in TASK_RUNNERS for a in argv[1:3])


def preload(argv: list[str] | None = None) -> list[str]:
    """Import :data:`PRELOAD` when this process runs tasks; a module that fails is left to the task."""
    if not runs_tasks(sys.argv if argv is None else argv):
        return []
    loaded = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as e:  # the task that needs it reports the error with its fix
            log.warning("Not preloaded: %s (%s)", name, e)
    return loaded


class WedSyncPreloadPlugin(AirflowPlugin):
    name = "wedsync_preload"


preload()
