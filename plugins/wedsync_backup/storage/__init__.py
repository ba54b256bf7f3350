"""Storage targets behind one interface.

The concrete targets are imported lazily: S3 and GCS pull in their (heavy) client libraries only when used.
"""

from typing import Any

from wedsync_backup.storage.base import ObjectInfo, ObjectWriter, Storage

__all__ = ["GCSStorage", "LocalStorage", "ObjectInfo", "ObjectWriter", "S3Storage", "Storage"]

_LAZY = {
    "LocalStorage": "wedsync_backup.storage.local",
    "S3Storage": "wedsync_backup.storage.s3",
    "GCSStorage": "wedsync_backup.storage.gcs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
