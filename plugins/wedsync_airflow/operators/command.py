"""The adapter every operator is: build what a command needs, call one phase, return its small result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from wedsync_backup.commands.resources import Resources, RunRef
from wedsync_backup.errors import WedSyncError

from wedsync_airflow.operators.base import WedSyncOperator
from wedsync_airflow.resources import airflow_resources, run_ref

T = TypeVar("T")


class CommandOperator(WedSyncOperator):
    """Base of the adapters: ``build_resources()`` from connections, ``run_of(context)``, ``call`` one phase.

    (Not ``resources``/``run``: BaseOperator has attributes of those names.)
    """

    def build_resources(self) -> Resources:
        return airflow_resources(self.policy())

    def run_of(self, context: Any) -> RunRef:
        return run_ref(context)

    def call(self, phase: Callable[[], T], fatal: tuple[type[WedSyncError], ...] = ()) -> T:
        """Run one phase: a permanent error fails at once (no retry), a phase with nothing to do skips."""
        return self.guarded(phase, fatal=fatal)
