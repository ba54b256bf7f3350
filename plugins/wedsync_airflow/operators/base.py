"""What every WedSync operator shares: the policy, and errors that say what to fix and whether to retry."""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from typing import Any, TypeVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from wedsync_backup.commands.resources import NothingToDo
from wedsync_backup.errors import is_transient
from wedsync_backup.policy import Policy, load_policy

T = TypeVar("T")
log = logging.getLogger(__name__)


class WedSyncOperator(BaseOperator):
    """Base: ``policy_path`` (templated) selects the backup policy; defaults to include/config."""

    template_fields: tuple[str, ...] = ("policy_path",)

    def __init__(self, *, policy_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy_path = policy_path

    def policy(self) -> Policy:
        return load_policy(self.policy_path or None)

    def post_execute(self, context: Any, result: Any = None) -> None:
        """Say what the task cost in memory: the tiers promise a bounded peak, and this line proves it."""
        self.log.info("Peak memory: %s", peak_memory())

    def guarded(self, fn: Callable[[], T], fatal: tuple[type[Exception], ...] = ()) -> T:
        """Run ``fn``, and let the error's cause decide: a transient fault (a restart, a dropped connection, a
        5xx, a timeout) is raised for Airflow to retry with backoff; a permanent one (a missing connection,
        wrong credentials, a missing bucket, a wrong key, a bad param, or a class in ``fatal``) fails at once,
        since no retry can fix it. Timeouts and kills (not ``Exception``) pass through untouched."""
        try:
            return fn()
        except AirflowException:
            raise  # Airflow's own signals (skip, fail, ...) keep their meaning
        except NothingToDo as e:  # a precondition not met yet (no full backup, a dry run): skip, saying why
            self.log.info("%s", e)
            raise AirflowSkipException(str(e)) from e
        except Exception as e:
            if isinstance(e, fatal) or not is_transient(e):
                self.log.error("%s", e)
                self.log.error("This cannot be fixed by retrying: failing now, without retries")
                raise AirflowFailException(str(e)) from e
            self.log.warning("%s", e)
            self.log.warning("This fault is transient: the task is retried with backoff if it has retries left")
            raise


def run_id_of(context: Any) -> str:
    return str(context["dag_run"].run_id)


def peak_memory() -> str:
    """This task process's peak resident set. (Child processes are left out: a child's own peak counts the
    parent's pages it was forked with, so it would say more about this process than about pg_dump.)"""
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB (task process)"  # KiB on Linux
