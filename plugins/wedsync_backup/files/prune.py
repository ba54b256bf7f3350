"""Retention of the content store: a content object goes when no retained backup's file state lists it.

Run after the backups themselves are pruned, and never while a backup runs (a running capture may have
stored content that no committed state lists yet).
"""

from __future__ import annotations

import logging

from wedsync_backup.crypto import Keyring
from wedsync_backup.files.content import content_key, present
from wedsync_backup.files.state import read_state
from wedsync_backup.manifest import Manifest
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)


def referenced(storage: Storage, manifests: list[Manifest], keyring: Keyring) -> set[str]:
    """Content hashes every retained capture (full states and deltas) lists."""
    out: set[str] = set()
    for m in manifests:
        if m.files is not None:
            out.update(e.sha256 for e in read_state(storage, m, keyring) if e.sha256 and not e.deleted)
    return out


def remove_unreferenced(storage: Storage, retained: list[Manifest], keyring: Keyring) -> list[str]:
    """Delete the content objects no retained backup references; returns their hashes."""
    stored = present(storage)
    if not stored:
        return []
    gone = sorted(set(stored) - referenced(storage, retained, keyring))
    storage.delete([content_key(sha) for sha in gone])
    if gone:
        log.info("Removed %d content objects no retained backup references from %s", len(gone), storage.name)
    return gone
