"""Named recovery points: "before the guest import" marks a moment a restore can later target by name.

A named point is the source's current WAL position and clock, read in one statement on the source, recorded
in the catalog's ``recovery_points`` (point_type 'named'). It holds no data: restoring to it is a
point-in-time restore to its time, served by the backup chains that cover that moment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from wedsync_backup.errors import ConfigError

MAX_LABEL = 200


def clean_label(label: str) -> str:
    """The label as stored: trimmed, one line, 1 to 200 characters."""
    text = " ".join(str(label or "").split())
    if not text:
        raise ConfigError("The recovery point has no label", fix='give it a label, e.g. "before the guest import"')
    if len(text) > MAX_LABEL:
        raise ConfigError(f"The recovery point label is {len(text)} characters long", fix=f"keep it to {MAX_LABEL}")
    return text


def source_position(source_dsn: str) -> tuple[datetime, str]:
    """The source's clock and current WAL position, read together."""
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        at, lsn = conn.execute("SELECT clock_timestamp(), pg_current_wal_lsn()::text").fetchone()
    return at, lsn


def mark_named_point(catalog_dsn: str, label: str, *, at: datetime, lsn: str, created_by: str) -> dict[str, Any]:
    """Record the point; a label already in use is refused (labels name one moment each)."""
    text = clean_label(label)
    with psycopg.connect(catalog_dsn, row_factory=dict_row) as conn:
        row = conn.execute(
            "INSERT INTO recovery_points (point_type, label, recovery_timestamp, wal_position, created_by)"
            " VALUES ('named', %s, %s, %s, %s) ON CONFLICT (label) WHERE point_type = 'named' DO NOTHING"
            " RETURNING id, label, recovery_timestamp, wal_position::text AS wal_position, created_by, created_at",
            (text, at, lsn, created_by),
        ).fetchone()
    if row is None:
        raise ConfigError(
            f"A recovery point named '{text}' already exists",
            fix="choose another label (labels name one moment each)",
        )
    return row


def find_named_point(catalog_dsn: str, label: str) -> dict[str, Any]:
    """The named point ``label``; refused with the known labels when there is none."""
    text = " ".join(str(label or "").split())
    with psycopg.connect(catalog_dsn, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT id, label, recovery_timestamp, wal_position::text AS wal_position, created_by, created_at"
            " FROM recovery_points WHERE point_type = 'named' AND label = %s",
            (text,),
        ).fetchone()
        if row:
            return row
        known = [
            r["label"]
            for r in conn.execute(
                "SELECT label FROM recovery_points WHERE point_type = 'named' ORDER BY recovery_timestamp DESC LIMIT 5"
            ).fetchall()
        ]
    raise ConfigError(
        f"No named recovery point '{text}'",
        "recent ones: " + ", ".join(f"'{k}'" for k in known) if known else "none has been recorded",
        "use GET /wedsync-backup/api/recovery-points to list them, or give target_time instead",
    )
