"""Parse-time helpers for DAG files: cheap, local reads only (no database, no network)."""

from __future__ import annotations

import os
from datetime import timedelta
from functools import lru_cache
from typing import Any

from wedsync_backup.policy import load_policy

from wedsync_airflow.notifiers import alert_on


@lru_cache(maxsize=4)
def _targets() -> tuple[tuple[str, str, str, str], ...]:
    """(name, role, kind, site) of every target in the local policy file, primary first."""
    return tuple((t.name, t.role, t.kind, t.site) for t in load_policy().targets)


def target_names(*, replicas_only: bool = False) -> list[str]:
    """The policy's targets in order (primary first): what per-target tasks are mapped over."""
    names = [name for name, *_ in _targets()]
    return names[1:] if replicas_only else names


def primary_target_name() -> str:
    return _targets()[0][0]


def describe_targets() -> str:
    """One line for a form: each target with its role, kind and site."""
    return "; ".join(f"{name} ({role}, {kind}, {site})" for name, role, kind, site in _targets())


def retry_delay(default_seconds: int = 120) -> timedelta:
    """First retry delay (doubling after); WEDSYNC_RETRY_DELAY_SECONDS shortens it for local stacks and tests."""
    return timedelta(seconds=int(os.environ.get("WEDSYNC_RETRY_DELAY_SECONDS", default_seconds)))


def backup_default_args(
    *,
    retries: int,
    execution_timeout: timedelta,
    first_retry_seconds: int = 120,
    max_retry_delay: timedelta | None = None,
) -> dict[str, Any]:
    """The backup tiers' task defaults: a transient fault is retried with doubling delays (capped at
    ``max_retry_delay``), a failure alerts (``backup_failed``), and no task runs past ``execution_timeout``."""
    args: dict[str, Any] = {
        "retries": retries,
        "retry_delay": retry_delay(first_retry_seconds),
        "retry_exponential_backoff": True,
        "on_failure_callback": alert_on("backup_failed"),
        "execution_timeout": execution_timeout,
    }
    if max_retry_delay is not None:
        args["max_retry_delay"] = max_retry_delay
    return args


def wedding_tick_minutes() -> int:
    """How often the wedding proximity DAG wakes: the wedding-day RPO (a wedding on its day is backed up that
    often; every other due wedding at its own, longer frequency)."""
    return max(1, min(59, load_policy().weddings.wedding_day_rpo_minutes))
