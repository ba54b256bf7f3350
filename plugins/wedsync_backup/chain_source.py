"""What a full backup's preflight prepares on the source for the incremental chain it starts.

The DDL capture (``wedsync_backup.logical.ddl``) is installed or refreshed, and that is recorded in the audit
log (the export records it in the manifest). Where it cannot be, the warning says whether an uncaptured change's
chain end will be placed exactly (the WAL readable: ``logical/wal_catalog.py``) or how to make it so. Large
objects are backed up by full backups only: their changes between fulls are not decoded, so any large object on
the source gets a loud warning on every run.
"""

from __future__ import annotations

import logging
from typing import Any

from wedsync_backup.catalog import Catalog
from wedsync_backup.logical.ddl import install_ddl_capture
from wedsync_backup.logical.slot import check_logical_decoding
from wedsync_backup.logical.wal_catalog import HOW_TO_ENABLE, wal_inspection_available
from wedsync_backup.pg import PgTarget
from wedsync_backup.policy import Policy

log = logging.getLogger(__name__)


def large_object_warning(source: PgTarget) -> str | None:
    with source.connect(autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]
    if not n:
        return None
    return (
        f"The source holds {n} large objects (pg_largeobject): full backups include them, but changes to them "
        "between full backups are NOT in the incremental chain (logical decoding does not carry them). A "
        "point-in-time restore brings them back as the full backup had them"
    )


def prepare_chain_source(
    policy: Policy, catalog: Catalog, source: PgTarget, *, actor: str, backup_id: str
) -> list[str]:
    """Install the DDL capture when a chain will start; returns warnings for the backup's row."""
    warnings = []
    lo = large_object_warning(source)
    if lo:
        log.warning("!!! %s", lo)
        warnings.append(lo)
    if policy.incremental.mode(check_logical_decoding(source)) != "logical":
        return warnings
    state = install_ddl_capture(source, policy.exclude_schemas)
    details: dict[str, Any] = state.as_dict()
    if state.installed:
        log.info("Schema change capture installed on %s (schema %s)", source.label, details["schema"])
        catalog.audit(
            "ddl_capture_installed", actor=actor, backup_id=backup_id, details=details, key=f"ddl_capture:{backup_id}"
        )
    else:
        with source.connect(autocommit=True) as conn:
            details["wal_inspection"] = wal_inspection_available(conn)
        placed = (
            "each chain end is placed exactly from the WAL (pg_walinspect)"
            if details["wal_inspection"]
            else f"a chain end may come before the change itself; {HOW_TO_ENABLE}"
        )
        w = f"Schema changes cannot be captured on {source.label}: {state.reason}; {placed}"
        log.warning("!!! %s", w)
        warnings.append(w)
        catalog.audit(
            "ddl_capture_unavailable", actor=actor, backup_id=backup_id, details=details, key=f"ddl_capture:{backup_id}"
        )
    return warnings
