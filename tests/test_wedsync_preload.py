"""The preload plugin imports the task modules only in the processes that fork tasks."""

from __future__ import annotations

import wedsync_preload


def test_only_the_processes_that_run_tasks_preload() -> None:
    assert wedsync_preload.runs_tasks(["/venv/bin/airflow", "scheduler"])
    assert wedsync_preload.runs_tasks(["/venv/bin/airflow", "celery", "worker", "--concurrency", "2"])
    for argv in (["/venv/bin/airflow", "api-server"], ["/venv/bin/airflow", "dag-processor"], ["pytest", "-q"]):
        assert not wedsync_preload.runs_tasks(argv)
        assert wedsync_preload.preload(argv) == []


def test_a_scheduler_preloads_the_hooks_and_commands() -> None:
    loaded = wedsync_preload.preload(["/venv/bin/airflow", "scheduler"])
    assert loaded == list(wedsync_preload.PRELOAD)
