"""The tracking catalog: what was backed up, where every verified copy lives, what can be restored.

It lives in its own PostgreSQL database (``backup_catalog``), reached through a libpq conninfo string.
Every method opens a short-lived connection and is idempotent, so a retried task never duplicates a row.
The catalog is derived data: everything in it except tests, events and the audit log can be rebuilt
from the manifests in the repository (``rebuild_from_manifests``, the ``catalog_rebuild`` DAG).

One module per concern; ``Catalog`` puts them together.
"""

from __future__ import annotations

from wedsync_backup.catalog.audit import AuditLog
from wedsync_backup.catalog.backup_tests import TEST_TYPES, BackupTests
from wedsync_backup.catalog.backups import REPLICA_KEYS, Backups
from wedsync_backup.catalog.connection import CatalogBase
from wedsync_backup.catalog.files import FileContents
from wedsync_backup.catalog.migrations import MIGRATIONS_DIR, Migration, load_migrations, migrate
from wedsync_backup.catalog.rebuild import Rebuild as _Rebuild
from wedsync_backup.catalog.rebuild import RebuildResult
from wedsync_backup.catalog.recovery_events import EVENT_STATUSES, RecoveryEvents
from wedsync_backup.catalog.wedding_backups import WeddingBackups
from wedsync_backup.catalog.weddings import WeddingSettings


class Catalog(
    _Rebuild,
    Backups,
    RecoveryEvents,
    BackupTests,
    WeddingSettings,
    WeddingBackups,
    AuditLog,
    FileContents,
    CatalogBase,
):
    """Repository over the tracking tables; ``dsn`` is a libpq conninfo string or URL."""


__all__ = [
    "EVENT_STATUSES",
    "MIGRATIONS_DIR",
    "REPLICA_KEYS",
    "TEST_TYPES",
    "Catalog",
    "Migration",
    "RebuildResult",
    "load_migrations",
    "migrate",
]
