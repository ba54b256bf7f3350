"""Catalog reads for the console: history, recovery points, targets, drills. Plain SQL on a psycopg connection.

Nothing here knows Airflow; every function takes an open connection with ``dict_row`` rows.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]

# What the platform cares about, from the per-table row counts of each backup (schema public).
PLATFORM_FIGURES = {
    "weddings": "weddings",
    "guests": "guests",
    "photos": "files",
    "timeline_events": "timeline_events",
}
BACKUP_TYPES = ("full", "incremental", "archive", "manual", "wedding")
STATUSES = ("pending", "in_progress", "completed", "failed")

_BACKUP_COLUMNS = """
    b.backup_id, b.backup_type, b.status, b.started_at, b.completed_at, b.size_bytes, b.compressed_size_bytes,
    b.components_backed_up, b.integrity_verified, b.last_tested, b.reason, b.created_by, b.retention_until,
    b.parent_backup_id, b.dag_id, b.run_id, b.key_id, b.consistent_lsn::text AS consistent_lsn, b.snapshot_time,
    b.warnings, b.error, b.total_rows, b.pruned_at
"""


def _figures(conn: Conn, backup_ids: list[str]) -> dict[str, dict[str, int]]:
    if not backup_ids:
        return {}
    rows = conn.execute(
        "SELECT backup_id, table_name, row_count FROM backup_table_stats"
        " WHERE backup_id = ANY(%s) AND schema_name = 'public' AND table_name = ANY(%s)",
        (backup_ids, list(PLATFORM_FIGURES.values())),
    ).fetchall()
    by_table = {table: name for name, table in PLATFORM_FIGURES.items()}
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(r["backup_id"], {})[by_table[r["table_name"]]] = r["row_count"]
    return out


def _replicas(conn: Conn, backup_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    if not backup_ids:
        return {}
    rows = conn.execute(
        "SELECT backup_id, target_name, kind, medium, site, location, stored_bytes, object_count, verified,"
        " verified_at, error FROM backup_replicas WHERE backup_id = ANY(%s) ORDER BY backup_id, target_name",
        (backup_ids,),
    ).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r.pop("backup_id"), []).append(r)
    return out


def describe(conn: Conn, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Backups with their copies, platform figures and compression ratio."""
    ids = [r["backup_id"] for r in rows]
    replicas, figures = _replicas(conn, ids), _figures(conn, ids)
    for r in rows:
        r["replicas"] = replicas.get(r["backup_id"], [])
        r["copies_verified"] = sum(1 for c in r["replicas"] if c["verified"])
        counts = figures.get(r["backup_id"], {})
        r["platform"] = {name: counts.get(name) for name in PLATFORM_FIGURES}
        plain, stored = r.get("size_bytes"), r.get("compressed_size_bytes")
        r["compression_ratio"] = round(plain / stored, 2) if plain and stored else None
    return rows


def history(
    conn: Conn,
    *,
    backup_type: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """Backups newest first, filtered and paged; ``total`` counts every match."""
    where = """
        (%(type)s::text IS NULL OR b.backup_type = %(type)s)
        AND (%(status)s::text IS NULL OR b.status = %(status)s)
        AND (%(since)s::timestamptz IS NULL OR b.started_at >= %(since)s)
        AND (%(until)s::timestamptz IS NULL OR b.started_at <= %(until)s)
    """
    args = {"type": backup_type, "status": status, "since": since, "until": until, "limit": limit, "offset": offset}
    total = conn.execute(f"SELECT count(*) AS n FROM backup_operations b WHERE {where}", args).fetchone()["n"]
    rows = conn.execute(
        f"SELECT {_BACKUP_COLUMNS} FROM backup_operations b WHERE {where}"
        " ORDER BY b.started_at DESC, b.backup_id LIMIT %(limit)s OFFSET %(offset)s",
        args,
    ).fetchall()
    return {"total": total, "limit": limit, "offset": offset, "items": describe(conn, rows)}


def newest_point(conn: Conn, backup_types: tuple[str, ...]) -> dict[str, Any] | None:
    """The newest verified (completed) backup of these types, and the moment up to which it covers changes.

    A full backup covers its snapshot. An incremental covers every change committed before its capture began,
    even when nothing was committed since the previous one: its start is a safe lower bound for that.
    """
    return conn.execute(
        "SELECT b.backup_id, b.backup_type, greatest(coalesce(r.recovery_timestamp, b.snapshot_time, b.completed_at),"
        " CASE WHEN b.backup_type = 'incremental' THEN b.started_at END) AS at"
        " FROM backup_operations b LEFT JOIN recovery_points r USING (backup_id)"
        " WHERE b.status = 'completed' AND b.pruned_at IS NULL AND b.backup_type = ANY(%s)"
        " ORDER BY 3 DESC NULLS LAST LIMIT 1",
        (list(backup_types),),
    ).fetchone()


def running(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT backup_id, backup_type, started_at, dag_id, run_id FROM backup_operations"
        " WHERE status = 'in_progress' ORDER BY started_at DESC"
    ).fetchall()


def targets(conn: Conn) -> list[dict[str, Any]]:
    """Per target: bytes held by kept backups, the last verification and whether the newest copy is good."""
    return conn.execute(
        """
        SELECT r.target_name, min(r.kind) AS kind, min(r.medium) AS medium, min(r.site) AS site,
               sum(r.stored_bytes) FILTER (WHERE b.pruned_at IS NULL) AS bytes_used,
               count(*) FILTER (WHERE b.pruned_at IS NULL AND b.status = 'completed') AS backups,
               max(r.verified_at) AS last_verified_at,
               (array_agg(r.verified ORDER BY r.updated_at DESC))[1] AS newest_verified,
               (array_agg(r.error ORDER BY r.updated_at DESC))[1] AS newest_error
        FROM backup_replicas r JOIN backup_operations b USING (backup_id)
        GROUP BY r.target_name ORDER BY r.target_name
        """
    ).fetchall()


def latest_rule_321(conn: Conn) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT rule_321 FROM backup_operations WHERE rule_321 IS NOT NULL ORDER BY started_at DESC LIMIT 1"
    ).fetchone()
    return row["rule_321"] if row else None


def drills(conn: Conn, *, limit: int = 10, since: datetime | None = None) -> list[dict[str, Any]]:
    """Restore drills, newest first, with their RTO (the drill's duration). Issue 10 names them restore_test."""
    return conn.execute(
        "SELECT id, backup_id, tested_at, status, duration_seconds AS rto_seconds, rows_checked, error, details"
        " FROM backup_tests WHERE test_type IN ('restore_drill', 'restore_test')"
        " AND (%(since)s::timestamptz IS NULL OR tested_at >= %(since)s) ORDER BY tested_at DESC LIMIT %(limit)s",
        {"limit": limit, "since": since},
    ).fetchall()


def restores(conn: Conn, *, since: datetime, limit: int = 50) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, event_type, status, started_at, completed_at, backup_id, mode, from_target, target_conn_id,"
        " dry_run, reason, triggered_by, run_id, data_loss_minutes, error FROM disaster_recovery_events"
        " WHERE started_at >= %s ORDER BY started_at DESC LIMIT %s",
        (since, limit),
    ).fetchall()


def restore_event(conn: Conn, dag_id: str, run_id: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT id, status, started_at, completed_at, backup_id, mode, from_target, target_conn_id, dry_run,"
        " data_loss_minutes, plan, result, error FROM disaster_recovery_events WHERE dag_id = %s AND run_id = %s",
        (dag_id, run_id),
    ).fetchone()


def success_rate(conn: Conn, since: datetime) -> dict[str, Any]:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'completed') AS completed,"
        " count(*) FILTER (WHERE status = 'failed') AS failed FROM backup_operations WHERE started_at >= %s",
        (since,),
    ).fetchone()
    finished = row["completed"] + row["failed"]
    row["rate"] = round(row["completed"] / finished, 3) if finished else None
    return row


def named_points(conn: Conn, since: datetime | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, label, recovery_timestamp AS at, wal_position::text AS lsn, created_by, created_at"
        " FROM recovery_points WHERE point_type = 'named'"
        " AND (%(since)s::timestamptz IS NULL OR recovery_timestamp >= %(since)s) ORDER BY recovery_timestamp",
        {"since": since},
    ).fetchall()


def chains(conn: Conn, since: datetime) -> dict[str, Any]:
    """Restorable ranges: each full backup with its incrementals, the gaps between chains, and archives.

    An incremental extends its range to the start of its capture (see ``newest_point``), not only to its last
    commit: with no commit in between, the moments up to the capture are restorable all the same.
    """
    points = conn.execute(
        """
        SELECT b.backup_id, b.backup_type, b.parent_backup_id, r.chain, r.wal_position::text AS lsn,
               greatest(r.recovery_timestamp, CASE WHEN b.backup_type = 'incremental' THEN b.started_at END) AS at
        FROM recovery_points r JOIN backup_operations b USING (backup_id)
        WHERE b.status = 'completed' AND b.pruned_at IS NULL AND r.point_type <> 'named'
        ORDER BY r.recovery_timestamp
        """
    ).fetchall()
    out_chains: dict[str, dict[str, Any]] = {}
    archives: list[dict[str, Any]] = []
    for p in points:
        root = (p["chain"] or [p["backup_id"]])[0]
        if p["backup_type"] == "archive":
            archives.append({"backup_id": p["backup_id"], "at": p["at"], "lsn": p["lsn"]})
            continue
        chain = out_chains.setdefault(root, {"full_backup_id": root, "points": []})
        chain["points"].append({"backup_id": p["backup_id"], "type": p["backup_type"], "at": p["at"], "lsn": p["lsn"]})
    listed = []
    for chain in out_chains.values():
        chain["from"] = chain["points"][0]["at"]
        chain["to"] = chain["points"][-1]["at"]
        chain["incrementals"] = len(chain["points"]) - 1
        if chain["to"] >= since:
            listed.append(chain)
    listed.sort(key=lambda c: c["from"])
    gaps = [
        {
            "from": a["to"],
            "to": b["from"],
            "minutes": round((b["from"] - a["to"]).total_seconds() / 60, 1),
            "why": f"no captured change between {a['points'][-1]['backup_id']} and the next full backup "
            f"{b['full_backup_id']}: moments in between cannot be restored exactly",
        }
        for a, b in itertools.pairwise(listed)
        if b["from"] - a["to"] > timedelta(seconds=1)
    ]
    return {"chains": listed, "gaps": gaps, "archives": [a for a in archives if a["at"] >= since]}


def wedding(conn: Conn, wedding_id: str) -> dict[str, Any]:
    """One wedding's settings and its wedding backups (every full and incremental covers it too)."""
    settings = conn.execute(
        "SELECT wedding_id, wedding_date, proximity_days, frequency_minutes, enabled FROM wedding_backup_settings"
        " WHERE wedding_id = %s",
        (wedding_id,),
    ).fetchone()
    rows = conn.execute(
        f"SELECT {_BACKUP_COLUMNS} FROM backup_operations b WHERE b.backup_type = 'wedding'"
        " AND b.status = 'completed' AND b.pruned_at IS NULL AND b.components_backed_up @> %s"
        " ORDER BY b.completed_at DESC LIMIT 200",
        (Jsonb([{"wedding_ids": [wedding_id]}]),),
    ).fetchall()
    return {"wedding_id": wedding_id, "settings": settings, "wedding_backups": describe(conn, rows)}
