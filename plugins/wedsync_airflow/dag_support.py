"""Parse-time helpers for DAG files: cheap, local reads only (no database, no network)."""

from __future__ import annotations

import os
from datetime import timedelta
from functools import lru_cache

from wedsync_backup.policy import load_policy


@lru_cache(maxsize=4)
def _names() -> tuple[str, ...]:
    return tuple(t.name for t in load_policy().targets)


def target_names(*, replicas_only: bool = False) -> list[str]:
    """The policy's targets in order (primary first): what per-target tasks are mapped over."""
    names = list(_names())
    return names[1:] if replicas_only else names


def retry_delay(default_seconds: int = 120) -> timedelta:
    """First retry delay (doubling after); WEDSYNC_RETRY_DELAY_SECONDS shortens it for local stacks and tests."""
    return timedelta(seconds=int(os.environ.get("WEDSYNC_RETRY_DELAY_SECONDS", default_seconds)))
