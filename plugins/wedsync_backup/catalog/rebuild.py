"""Rebuilding the catalog's backup rows from the manifests in the repository."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from wedsync_backup.catalog.audit import write_audit
from wedsync_backup.catalog.backups import DEFAULT_ROLES, Backups
from wedsync_backup.catalog.connection import parse_time
from wedsync_backup.catalog.files import FileContents
from wedsync_backup.errors import IntegrityError
from wedsync_backup.manifest import Manifest


@dataclass
class RebuildResult:
    """What ``rebuild_from_manifests`` did: rows (re)created, and manifests it could not use, with why."""

    rebuilt: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class Rebuild(Backups, FileContents):
    def rebuild_from_manifests(
        self,
        manifests: Iterable[tuple[Manifest, str, list[dict[str, Any]]]],
        *,
        retention_days: dict[str, int] | None = None,
        roles: Mapping[str, str] = DEFAULT_ROLES,
        actor: str = "catalog-rebuild",
    ) -> RebuildResult:
        """Re-create completed rows from (manifest, manifest sha256, verified replicas) found in storage.

        Everything the manifest carries comes back: sizes, tables, LSN, key, the run, reason, creator, the
        3-2-1 verdict, the warnings and the retention it was given. Parents are recorded before their
        incrementals. A manifest written before it carried its retention gets its creation time plus
        ``retention_days[backup_type]`` (kept forever when no tier is given); an existing row keeps its own.
        A manifest that cannot be recorded (unverified copy, missing parent) is skipped with the reason.
        """
        result = RebuildResult()
        items = sorted(manifests, key=lambda item: (item[0].created_at, item[0].backup_id))
        for manifest, sha, replicas in items:
            days = (retention_days or {}).get(manifest.backup_type)
            recorded = manifest.provenance_info.retention_until
            retention = parse_time(recorded, f"Backup {manifest.backup_id} retention_until") if recorded else None
            if retention is None and days is not None:
                created = parse_time(manifest.created_at, f"Backup {manifest.backup_id} created_at")
                assert created is not None
                retention = created + timedelta(days=days)
            try:
                with self.connect() as conn:
                    self._complete(conn, manifest, sha, replicas, retention, roles, actor)
            except IntegrityError as e:
                result.skipped[manifest.backup_id] = str(e)
                continue
            result.rebuilt.append(manifest.backup_id)
            if manifest.files is not None:  # the files component it captured (catalog/files.py)
                self.record_files_capture(manifest.backup_id, manifest.files)
        with self.connect() as conn:
            write_audit(
                conn,
                "catalog_rebuilt",
                actor=actor,
                details={"rebuilt": result.rebuilt, "skipped": sorted(result.skipped)},
            )
        return result
