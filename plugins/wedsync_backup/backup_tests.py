"""Recording proofs of a backup in ``backup_tests``: restore drills (restore_test) and scrubs (integrity_check).

The row carries the specification's columns (success, errors_found, restore_duration, ...) and the older
ones (status, details, duration_seconds, rows_checked) so earlier readers keep working. A retried task
updates its own row (one per run, backup, test type and target). A passed test moves
``backup_operations.last_tested`` forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from wedsync_backup.catalog import Catalog
from wedsync_backup.errors import ConfigError

TEST_TYPES = ("restore_test", "integrity_check", "data_verification")


@dataclass
class BackupTest:
    backup_id: str
    test_type: str
    success: bool
    test_environment: str
    tested_by: str
    target_name: str = ""
    errors_found: list[str] = field(default_factory=list)
    data_samples_verified: int | None = None
    duration_seconds: float | None = None
    data_loss_detected: bool | None = None
    notes: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    dag_id: str | None = None
    run_id: str | None = None


def record_test(cat: Catalog, test: BackupTest, *, tested_at: datetime | None = None) -> int:
    """Insert (or, for a retry of the same run, update) the test's row; returns its id."""
    if test.test_type not in TEST_TYPES:
        raise ConfigError(f"Unknown backup test type '{test.test_type}'", fix=f"use one of {', '.join(TEST_TYPES)}")
    at = tested_at or datetime.now(UTC)
    duration = timedelta(seconds=test.duration_seconds) if test.duration_seconds is not None else None
    params = {
        "backup": test.backup_id,
        "at": at,
        "type": test.test_type,
        "target": test.target_name,
        "status": "passed" if test.success else "failed",
        "seconds": test.duration_seconds,
        "rows": test.data_samples_verified,
        "details": Jsonb(test.details),
        "error": "; ".join(test.errors_found)[:4000] or None,
        "dag": test.dag_id,
        "run": test.run_id,
        "env": test.test_environment,
        "success": test.success,
        "errors": Jsonb(test.errors_found),
        "samples": test.data_samples_verified,
        "duration": duration,
        "loss": test.data_loss_detected,
        "by": test.tested_by,
        "notes": test.notes,
    }
    with cat.connect() as conn:
        row = conn.execute(
            """
            INSERT INTO backup_tests (backup_id, tested_at, test_type, target_name, status, duration_seconds,
                rows_checked, details, error, dag_id, run_id, test_environment, success, errors_found,
                data_samples_verified, restore_duration, data_loss_detected, tested_by, notes)
            VALUES (%(backup)s, %(at)s, %(type)s, %(target)s, %(status)s, %(seconds)s, %(rows)s, %(details)s,
                %(error)s, %(dag)s, %(run)s, %(env)s, %(success)s, %(errors)s, %(samples)s, %(duration)s,
                %(loss)s, %(by)s, %(notes)s)
            ON CONFLICT (dag_id, run_id, backup_id, test_type, target_name) WHERE run_id IS NOT NULL
            DO UPDATE SET tested_at = EXCLUDED.tested_at, status = EXCLUDED.status,
                duration_seconds = EXCLUDED.duration_seconds, rows_checked = EXCLUDED.rows_checked,
                details = EXCLUDED.details, error = EXCLUDED.error, test_environment = EXCLUDED.test_environment,
                success = EXCLUDED.success, errors_found = EXCLUDED.errors_found,
                data_samples_verified = EXCLUDED.data_samples_verified,
                restore_duration = EXCLUDED.restore_duration, data_loss_detected = EXCLUDED.data_loss_detected,
                tested_by = EXCLUDED.tested_by, notes = EXCLUDED.notes
            RETURNING id
            """,
            params,
        ).fetchone()
        if test.success:
            conn.execute(
                "UPDATE backup_operations SET last_tested = GREATEST(last_tested, %s) WHERE backup_id = %s",
                (at, test.backup_id),
            )
    assert row is not None
    return int(row["id"])


def latest_tests(cat: Catalog, backup_id: str, test_type: str | None = None) -> list[dict[str, Any]]:
    with cat.connect() as conn:
        return conn.execute(
            "SELECT * FROM backup_tests WHERE backup_id = %(b)s AND (%(t)s::text IS NULL OR test_type = %(t)s)"
            " ORDER BY tested_at DESC, id DESC",
            {"b": backup_id, "t": test_type},
        ).fetchall()
