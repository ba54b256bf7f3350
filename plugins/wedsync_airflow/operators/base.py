"""What every WedSync operator shares: the policy, and errors that say what to fix."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from wedsync_backup.errors import ConfigError, WedSyncError
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

    def guarded(self, fn: Callable[[], T], fatal: tuple[type[WedSyncError], ...] = (ConfigError,)) -> T:
        """Run ``fn``; a ``fatal`` error fails at once (a retry cannot fix a wrong key or param)."""
        try:
            return fn()
        except fatal as e:
            self.log.error("%s", e)
            raise AirflowFailException(str(e)) from e
        except WedSyncError as e:
            self.log.error("%s", e)
            raise


def run_id_of(context: Any) -> str:
    return str(context["dag_run"].run_id)
