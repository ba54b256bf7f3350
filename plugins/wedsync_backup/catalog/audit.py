"""The append-only audit log: who did what. A ``key`` makes a retried action write its entry once."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from wedsync_backup.catalog.connection import CatalogBase, Conn


def write_audit(
    conn: Conn,
    action: str,
    *,
    actor: str,
    backup_id: str | None = None,
    details: dict[str, Any] | None = None,
    key: str | None = None,
) -> bool:
    cur = conn.execute(
        "INSERT INTO audit_log (actor, action, backup_id, details, event_key) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (event_key) DO NOTHING",
        (actor, action, backup_id, Jsonb(details or {}), key),
    )
    return cur.rowcount == 1


class AuditLog(CatalogBase):
    def audit(
        self,
        action: str,
        *,
        actor: str,
        backup_id: str | None = None,
        details: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> bool:
        """Append an audit entry. With ``key``, a retry writes it only once (False when already there)."""
        with self.connect() as conn:
            return write_audit(conn, action, actor=actor, backup_id=backup_id, details=details, key=key)

    def audit_entries(self, backup_id: str | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM audit_log WHERE %(id)s::text IS NULL OR backup_id = %(id)s ORDER BY id",
                {"id": backup_id},
            ).fetchall()
