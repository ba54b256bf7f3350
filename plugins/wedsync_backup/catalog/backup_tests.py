"""backup_tests: verifications and restore drills run against a backup; a passed one moves last_tested."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from wedsync_backup.catalog.connection import CatalogBase, aware
from wedsync_backup.errors import ConfigError

TEST_TYPES = ("restore_drill", "verify")


class BackupTests(CatalogBase):
    def record_backup_test(
        self,
        *,
        backup_id: str,
        test_type: str,
        status: str,
        target_name: str | None = None,
        duration_seconds: float | None = None,
        rows_checked: int | None = None,
        details: dict[str, Any] | None = None,
        error: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        tested_at: datetime | None = None,
    ) -> int:
        """Record a verify or restore drill; with ``run_id`` a retry updates its own row. Returns its id.

        A passed test also moves ``backup_operations.last_tested`` forward.
        """
        if test_type not in TEST_TYPES:
            raise ConfigError(f"Unknown backup test type '{test_type}'", fix=f"use one of {', '.join(TEST_TYPES)}")
        if status not in ("passed", "failed"):
            raise ConfigError(f"Unknown backup test status '{status}'", fix="use passed or failed")
        tested_at = aware(tested_at, "tested_at") or datetime.now(UTC)
        with self.connect() as conn:
            if not conn.execute("SELECT 1 FROM backup_operations WHERE backup_id = %s", (backup_id,)).fetchone():
                raise ConfigError(
                    f"Backup {backup_id} is not in the catalog", fix="test a backup listed by the catalog"
                )
            row = conn.execute(
                """
                INSERT INTO backup_tests (backup_id, tested_at, test_type, target_name, status,
                    duration_seconds, rows_checked, details, error, dag_id, run_id)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (dag_id, run_id, backup_id, test_type, target_name) WHERE run_id IS NOT NULL
                DO UPDATE SET tested_at = EXCLUDED.tested_at, status = EXCLUDED.status,
                    duration_seconds = EXCLUDED.duration_seconds, rows_checked = EXCLUDED.rows_checked,
                    details = EXCLUDED.details, error = EXCLUDED.error
                RETURNING id
                """,
                (
                    backup_id,
                    tested_at,
                    test_type,
                    target_name or "",
                    status,
                    duration_seconds,
                    rows_checked,
                    Jsonb(details or {}),
                    error,
                    dag_id,
                    run_id,
                ),
            ).fetchone()
            if status == "passed":
                conn.execute(
                    "UPDATE backup_operations SET last_tested = GREATEST(last_tested, %s) WHERE backup_id = %s",
                    (tested_at, backup_id),
                )
            assert row is not None
            return int(row["id"])

    def backup_tests(self, backup_id: str) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM backup_tests WHERE backup_id = %s ORDER BY tested_at DESC, id DESC",
                (backup_id,),
            ).fetchall()
