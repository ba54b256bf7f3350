"""Storage targets behind one interface."""

from wedsync_backup.storage.base import ObjectInfo, ObjectWriter, Storage

__all__ = ["ObjectInfo", "ObjectWriter", "Storage"]
