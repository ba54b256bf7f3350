"""One short-lived connection per catalog call, and the time checks every concern shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from wedsync_backup.errors import ConfigError, IntegrityError, StorageError

Conn = psycopg.Connection[dict[str, Any]]


@contextmanager
def _connect(dsn: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """One connection for one call: commits on success, rolls back on any error."""
    try:
        conn = psycopg.connect(dsn, row_factory=dict_row, application_name="wedsync_catalog")
    except psycopg.OperationalError as e:
        raise StorageError(
            "Cannot connect to the backup catalog database",
            str(e).strip(),
            "check the Airflow connection 'backup_catalog' and that its database server is up",
        ) from e
    with conn:
        yield conn


def aware(value: datetime | None, what: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ConfigError(
            f"{what} {value.isoformat()} has no time zone",
            "the catalog stores instants, and a naive time is ambiguous",
            "pass a timezone-aware datetime, e.g. datetime.now(UTC)",
        )
    return value


def parse_time(value: Any, what: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return aware(value, what)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError as e:
        raise IntegrityError(f"{what} '{value}' is not an ISO 8601 time", str(e), "check the manifest") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class CatalogBase:
    """Repository over the tracking tables; ``dsn`` is a libpq conninfo string or URL."""

    def __init__(self, dsn: str, *, migrations_dir: Path | None = None) -> None:
        self.dsn = dsn
        self.migrations_dir = migrations_dir

    @contextmanager
    def connect(self) -> Iterator[Conn]:
        with _connect(self.dsn) as conn:
            yield conn

    def migrate(self) -> list[str]:
        from wedsync_backup.catalog.migrations import migrate

        return migrate(self.dsn, self.migrations_dir)
