"""What schema changes did to an incremental chain, in the catalog: replayed in place, or the chain ended there.

The incremental's catalog row gets ``schema_changes`` ('none' | 'replayed' | 'chain_ended') and
``schema_change_details`` (migration 0002); a chain that ended also gets a warning on the row and an audit entry,
so the catalog, the UI and an on-call engineer can all tell the two apart with one query.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from wedsync_backup.catalog import Catalog
from wedsync_backup.logical.wal_catalog import HOW_TO_ENABLE
from wedsync_backup.manifest import Manifest


def outcome(manifest: Manifest) -> tuple[str, dict[str, Any]]:
    """('none' | 'replayed' | 'chain_ended', details) of an incremental."""
    ddl = manifest.extra.get("schema_changes") or []
    end = manifest.extra.get("chain_end")
    details: dict[str, Any] = {"replayed": [{k: d[k] for k in ("tag", "lsn", "statement")} for d in ddl]}
    if end:
        details["chain_end"] = end
        return "chain_ended", details
    return ("replayed" if ddl else "none"), details


def chain_end_warning(end: dict[str, Any]) -> str:
    text = (
        f"The incremental chain ended here: {end['reason']}. Moments up to {end['covered_until']} are restorable; "
        "later ones only from the next full backup (triggered now)"
    )
    if end.get("placed") == "bounded":  # placed from the change stream alone: possibly before the change
        text += f". The chain may end earlier than the change itself: {HOW_TO_ENABLE}"
    return text


def record_outcome(catalog: Catalog, manifest: Manifest, *, actor: str) -> str:
    """Write the outcome on the incremental's row (idempotent: a retry writes the same) and audit a chain end."""
    kind, details = outcome(manifest)
    warning = chain_end_warning(details["chain_end"]) if kind == "chain_ended" else None
    with catalog.connect() as conn:
        conn.execute(
            "UPDATE backup_operations SET schema_changes = %s, schema_change_details = %s,"
            " warnings = CASE WHEN %s::text IS NULL OR warnings @> to_jsonb(ARRAY[%s::text]) THEN warnings"
            " ELSE warnings || to_jsonb(ARRAY[%s::text]) END WHERE backup_id = %s",
            (kind, Jsonb(details), warning, warning, warning, manifest.backup_id),
        )
    if kind != "none":
        catalog.audit(
            "chain_ended" if kind == "chain_ended" else "schema_changes_captured",
            actor=actor,
            backup_id=manifest.backup_id,
            details={"full": (manifest.extra.get("chain") or [None])[0], **details},
            key=f"{kind}:{manifest.backup_id}",
        )
    return kind
