"""file_contents and backup_files: the shared content store of the files component and each backup's capture."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from wedsync_backup.catalog.connection import CatalogBase
from wedsync_backup.files.content import content_key
from wedsync_backup.manifest import FilesSection, StoredObject


def _content(row: dict[str, Any]) -> StoredObject:
    sha = row["content_sha256"]
    return StoredObject(content_key(sha), row["stored_bytes"], row["stored_sha256"], row["size_bytes"], sha)


class FileContents(CatalogBase):
    def record_contents(self, stored: list[StoredObject], backup_id: str) -> None:
        """Content objects this backup uploaded (already known ones keep their first backup)."""
        if not stored:
            return
        with self.connect() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO file_contents (content_sha256, size_bytes, stored_bytes, stored_sha256, first_backup_id)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (content_sha256) DO NOTHING",
                [(o.plain_sha256, o.plain_bytes, o.stored_bytes, o.stored_sha256, backup_id) for o in stored],
            )

    def stored_content(self, sha256: str) -> StoredObject | None:
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM file_contents WHERE content_sha256 = %s", (sha256,)).fetchone()
        return None if row is None else _content(row)

    def contents(self) -> list[StoredObject]:
        """Every content object recorded (what the scrub expects on every target)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT content_sha256, size_bytes, stored_bytes, stored_sha256 FROM file_contents"
            ).fetchall()
        return [_content(r) for r in rows]

    def forget_contents(self, sha256s: list[str]) -> None:
        with self.connect() as conn:
            conn.execute("DELETE FROM file_contents WHERE content_sha256 = ANY(%s)", (sha256s,))

    def record_files_capture(self, backup_id: str, section: FilesSection) -> None:
        """The backup's files capture (``scope``: NULL for the whole file state, else the weddings it holds), and
        'files' among its components (its row is in progress until commit)."""
        with self.connect() as conn:
            conn.execute(
                """
                INSERT INTO backup_files (backup_id, captured_at, delta_of, objects, bytes, changed, new_objects,
                    new_bytes, problems, scope)
                SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s
                WHERE EXISTS (SELECT 1 FROM backup_operations WHERE backup_id = %s)
                ON CONFLICT (backup_id) DO UPDATE SET captured_at = EXCLUDED.captured_at,
                    delta_of = EXCLUDED.delta_of, objects = EXCLUDED.objects, bytes = EXCLUDED.bytes,
                    changed = EXCLUDED.changed, new_objects = EXCLUDED.new_objects, new_bytes = EXCLUDED.new_bytes,
                    problems = EXCLUDED.problems, scope = EXCLUDED.scope
                """,
                (
                    backup_id,
                    section.captured_at,
                    section.delta_of,
                    section.objects,
                    section.bytes,
                    section.changed,
                    section.new_objects,
                    section.new_bytes,
                    Jsonb(section.problems),
                    None if section.scope is None else Jsonb(section.scope),
                    backup_id,
                ),
            )
            conn.execute(
                "UPDATE backup_operations SET components_backed_up = components_backed_up || '[\"files\"]'::jsonb,"
                " warnings = warnings || %s WHERE backup_id = %s AND NOT components_backed_up ? 'files'",
                (Jsonb(section.problems[:20]), backup_id),
            )

    def files_capture(self, backup_id: str) -> dict[str, Any] | None:
        with self.connect() as conn:
            return conn.execute("SELECT * FROM backup_files WHERE backup_id = %s", (backup_id,)).fetchone()
