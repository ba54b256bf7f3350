"""The fallback incremental for a source without logical decoding: an ``updated_at`` watermark.

Rows whose watermark column moved past the previous capture (minus an overlap, for transactions that stamped
their rows before the previous capture but committed after it) are captured as UPSERTs. It is a weaker
promise than logical decoding, and every manifest, catalog row and log says so: deletes are not captured,
tables without the column or without a primary key are not captured at all, and a restore can only land on
a capture point.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from wedsync_backup.crypto import Keyring
from wedsync_backup.export import SYSTEM_SCHEMA_FILTER
from wedsync_backup.manifest import Manifest, Provenance, backup_prefix
from wedsync_backup.pg import PgTarget, qualified, quote_ident
from wedsync_backup.pipeline import encode_to_storage
from wedsync_backup.policy import DEFAULT_ZSTD_LEVEL
from wedsync_backup.repository import begin_attempt, seal_pending
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
WARNING = "watermark incremental: DELETEs are not captured; restores land on capture points only"
OVERLAP = timedelta(minutes=5)


def watermark_tables(
    conn: Any, column: str, exclude_schemas: tuple[str, ...]
) -> tuple[list[tuple[str, str, list[str]]], list[str]]:
    """(schema, table, columns) of tables that can be captured, and the qualified names of those that cannot."""
    rows = conn.execute(
        f"""
        SELECT n.nspname, c.relname,
               ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0
                     AND NOT attisdropped ORDER BY attnum),
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = %(col)s
                       AND NOT a.attisdropped AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype)),
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {SYSTEM_SCHEMA_FILTER}
         ORDER BY 1, 2
        """,
        {"col": column, "exclude": list(exclude_schemas)},
    ).fetchall()
    ok = [(s, t, list(cols)) for s, t, cols, has_col, has_pk in rows if has_col and has_pk]
    missing = [f"{s}.{t}" for s, t, _, has_col, has_pk in rows if not (has_col and has_pk)]
    return ok, missing


def _rows(
    source: PgTarget, column: str, since: datetime, exclude_schemas: tuple[str, ...], info: dict[str, Any]
) -> Iterator[bytes]:
    from wedsync_backup.logical.slot import STABLE_OUTPUT

    with source.connect(autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(STABLE_OUTPUT)
        now = conn.execute("SELECT now()").fetchone()[0]
        tables, missing = watermark_tables(conn, column, exclude_schemas)
        info.update(watermark=now.astimezone(UTC).isoformat(), not_captured=missing, per_table={})
        yield (json.dumps([None, None, "BEGIN 0"]) + "\n").encode()
        for schema, table, cols in tables:
            arr = ", ".join(f"{quote_ident(c)}::text" for c in cols)
            n = 0
            with conn.cursor(name=f"wm_{abs(hash((schema, table)))}") as cur:
                cur.itersize = 2000
                cur.execute(
                    f"SELECT ARRAY[{arr}] FROM {qualified(schema, table)} WHERE {quote_ident(column)} > %s",
                    (since,),
                )
                batch = []
                for (values,) in cur:
                    row = {"op": "UPSERT", "table": [schema, table], "new": dict(zip(cols, values, strict=True))}
                    batch.append(json.dumps([None, None, row]))
                    n += 1
                    if len(batch) >= 2000:
                        yield ("\n".join(batch) + "\n").encode()
                        batch.clear()
                if batch:
                    yield ("\n".join(batch) + "\n").encode()
            if n:
                info["per_table"][f"{schema}.{table}"] = {"upsert": n}
        yield (json.dumps([None, None, f"COMMIT 0 (at {now.astimezone(UTC).isoformat()})"]) + "\n").encode()
        conn.rollback()


def capture_watermark(
    source: PgTarget,
    storage: Storage,
    keyring: Keyring,
    *,
    backup_id: str,
    parent: Manifest,
    chain: list[str],
    column: str = "updated_at",
    exclude_schemas: tuple[str, ...] = (),
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    extra: dict[str, Any] | None = None,
    provenance: Provenance | None = None,
) -> Manifest:
    """Capture rows changed since the parent's watermark into a new incremental (pending manifest)."""
    done = begin_attempt(storage, backup_id)
    if done is not None:
        return done
    prev = datetime.fromisoformat(parent.extra.get("watermark") or parent.consistent_point["time"])
    info: dict[str, Any] = {}
    data_key = keyring.new_data_key(backup_id)
    key = f"{backup_prefix(backup_id)}changes.wsb"
    result = encode_to_storage(
        _rows(source, column, prev - OVERLAP, exclude_schemas, info), storage, key, data_key, zstd_level=zstd_level
    )
    upserts = sum(c["upsert"] for c in info["per_table"].values())
    manifest = Manifest(
        backup_id=backup_id,
        backup_type="incremental",
        created_at=info["watermark"],
        source=dict(parent.source),
        consistent_point={"time": info["watermark"], "lsn": None, "method": "watermark"},
        encryption=data_key.manifest_section(),
        compression={"algorithm": "zstd", "level": zstd_level},
        schema={},
        changes={"object": result.stored_object().__dict__, "format": "watermark-jsonl", "column": column},
        parent_backup_id=parent.backup_id,
        provenance=provenance,
        extra={
            **(extra or {}),
            "method": "watermark",
            "chain": [*chain, backup_id],
            "watermark": info["watermark"],
            "captured_at": info["watermark"],
            "since": (prev - OVERLAP).isoformat(),
            "first_commit": info["watermark"],
            "last_commit": info["watermark"],
            "transactions": 1,
            "changes": upserts,
            "per_table": info["per_table"],
            "captures_deletes": False,
            "not_captured": info["not_captured"],
            "warning": WARNING,
        },
    )
    seal_pending(storage, manifest, data_key)
    log.warning("Captured %s by watermark (%s): %d rows; %s", backup_id, column, upserts, WARNING)
    return manifest


def watermark_now() -> datetime:
    return datetime.now(UTC)
