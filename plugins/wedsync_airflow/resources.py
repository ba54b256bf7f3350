"""Airflow -> core commands: the resources a command needs, built from Airflow connections, and the run."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from wedsync_backup.commands.resources import Resources, RunRef
from wedsync_backup.policy import Policy, TargetPolicy
from wedsync_backup.storage.base import Storage

from wedsync_airflow.connections import catalog, keyring, pg_target
from wedsync_airflow.targets import build_storage

log = logging.getLogger(__name__)
BUILD_SWITCH_INTERVAL = 0.0002  # seconds, while storages are built in the background (see there)


def airflow_resources(policy: Policy) -> Resources:
    """Storages through the provider hooks, databases and keys from connections; each built when needed.

    A storage is built once per task (its connection read, its client made) and reused by every phase the
    task runs: building one costs up to a second on a busy machine. Safe to call from several threads (see
    ``build_storages_in_background``): each target is built once, and one being built does not hold up another."""
    storages: dict[str, Storage] = {}
    locks: dict[str, threading.Lock] = {}
    guard = threading.Lock()

    def open_storage(target: TargetPolicy) -> Storage:
        with guard:
            lock = locks.setdefault(target.name, threading.Lock())
        with lock:
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


def supervisor_is_thread_safe() -> bool:
    """Whether the task's channel to its supervisor (connections, variables, XComs) may be used from several
    threads: true in a task process, whose channel has a lock; false under `airflow dags test`, whose in-process
    stand-in is not thread-safe."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import CommsDecoder

    return isinstance(getattr(task_runner, "SUPERVISOR_COMMS", None), CommsDecoder)


def build_storages_in_background(res: Resources, *more: Callable[[], object]) -> None:
    """Build every target's storage (then ``more``: other storages of ``res``) in a thread while the caller does
    other work: the provider hooks' imports and clients cost most of a second of CPU, which the caller's database
    work (waiting on PostgreSQL) leaves free. A storage that cannot be built is left for the phase that needs it,
    to fail there as it would have.

    Under `airflow dags test` they are built now, in the caller's thread: there the task runs in-process, and the
    stand-in for its supervisor is not thread-safe (while it answers one thread's request, such as a connection
    a hook reads, it removes itself, and a request of the task's own thread fails)."""

    def build(where: str) -> None:
        began = time.monotonic()
        for make in [*(lambda t=t: res.open_storage(t) for t in res.policy.targets), *more]:
            with contextlib.suppress(Exception):
                make()
        log.info("Storages built %s in %.2f s", where, time.monotonic() - began)

    if not supervisor_is_thread_safe():
        build("ahead")
        return

    def build_in_background() -> None:
        try:
            build("in the background")
        finally:
            sys.setswitchinterval(default)

    # Imports are pure Python: they hold the GIL, and the caller, back from each reply of PostgreSQL, waits up to
    # the switch interval (5 ms) for it, on every round trip. Shorter while the build runs.
    default = sys.getswitchinterval()
    sys.setswitchinterval(min(default, BUILD_SWITCH_INTERVAL))
    threading.Thread(target=build_in_background, name="build-storages", daemon=True).start()
