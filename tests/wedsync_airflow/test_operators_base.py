"""guarded(): a permanent fault fails the task at once; a transient one is raised for Airflow to retry."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from wedsync_airflow.operators.base import WedSyncOperator
from wedsync_backup.commands.resources import NothingToDo
from wedsync_backup.errors import ConfigError, StorageError, TransientError


def _raise(error: BaseException):  # type: ignore[no-untyped-def]
    def fn() -> None:
        raise error

    return fn


def test_permanent_fails_at_once_transient_is_retried_and_signals_pass() -> None:
    op = WedSyncOperator(task_id="t")
    with pytest.raises(AirflowFailException, match="To fix: set it"):
        op.guarded(_raise(ConfigError("Param x is wrong", fix="set it")))
    with pytest.raises(AirflowFailException):
        op.guarded(_raise(StorageError("bucket gone", transient=False)))
    with pytest.raises(TransientError):
        op.guarded(_raise(TransientError("Cannot connect", "Connection refused")))
    with pytest.raises(ConnectionResetError):
        op.guarded(_raise(ConnectionResetError()))
    with pytest.raises(AirflowSkipException):
        op.guarded(_raise(AirflowSkipException("nothing to do")))
    with pytest.raises(KeyboardInterrupt):  # a kill or timeout is never turned into an ordinary failure
        op.guarded(_raise(KeyboardInterrupt()))
    with pytest.raises(AirflowFailException):
        op.guarded(_raise(TransientError("x")), fatal=(TransientError,))


def test_a_phase_with_nothing_to_do_skips_saying_why() -> None:
    """NothingToDo (no full backup yet, a dry run) is a skip, never a failure: the stack starts green."""
    op = WedSyncOperator(task_id="t")
    with pytest.raises(AirflowSkipException, match="No full backup exists yet"):
        op.guarded(_raise(NothingToDo("No full backup exists yet: this run skips")))
