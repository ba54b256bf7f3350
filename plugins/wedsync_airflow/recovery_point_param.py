"""emergency_restore's ``recovery_point`` param: a named recovery point instead of a target_time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from wedsync_backup.errors import ConfigError
from wedsync_backup.named_points import find_named_point
from wedsync_backup.policy import Policy

from wedsync_airflow.connections import catalog

UNSET = (None, "", "None")


def named_point_time(
    recovery_point: str | None, mode: str, target_time: str | None, policy: Callable[[], Policy]
) -> datetime | None:
    """The moment of the named point (None when no name is given); refused when it conflicts with the mode."""
    if recovery_point in UNSET:
        return None
    if mode != "point_in_time":
        raise ConfigError(
            f"recovery_point '{recovery_point}' is given but mode is '{mode}'",
            fix="set mode to point_in_time to restore to a named recovery point",
        )
    if target_time not in UNSET:
        raise ConfigError(
            "Both recovery_point and target_time are given",
            fix="give one of them: the named point's label, or a target_time",
        )
    point = find_named_point(catalog(policy()).dsn, str(recovery_point))
    return point["recovery_timestamp"].astimezone(UTC)
