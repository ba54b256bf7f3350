"""wedding_backup_settings: weddings close to their date get extra, more frequent backups."""

from __future__ import annotations

from datetime import date
from typing import Any

from wedsync_backup.catalog.connection import CatalogBase


class WeddingSettings(CatalogBase):
    def upsert_wedding_settings(
        self,
        wedding_id: str,
        *,
        wedding_date: date,
        organization_id: str | None = None,
        proximity_days: int = 7,
        frequency_minutes: int = 15,
        enabled: bool = True,
    ) -> None:
        with self.connect() as conn:
            conn.execute(
                """
                INSERT INTO wedding_backup_settings (wedding_id, organization_id, wedding_date,
                    proximity_days, frequency_minutes, enabled)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (wedding_id) DO UPDATE SET organization_id = EXCLUDED.organization_id,
                    wedding_date = EXCLUDED.wedding_date, proximity_days = EXCLUDED.proximity_days,
                    frequency_minutes = EXCLUDED.frequency_minutes, enabled = EXCLUDED.enabled,
                    updated_at = now()
                """,
                (wedding_id, organization_id, wedding_date, proximity_days, frequency_minutes, enabled),
            )

    def weddings_due(self, today: date) -> list[dict[str, Any]]:
        """Enabled weddings within their proximity window of ``today`` (date itself included)."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM wedding_backup_settings WHERE enabled AND wedding_date >= %(d)s"
                " AND wedding_date - %(d)s <= proximity_days ORDER BY wedding_date, wedding_id",
                {"d": today},
            ).fetchall()
