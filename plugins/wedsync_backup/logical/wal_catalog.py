"""Which transactions wrote the source's system catalogs, read from the WAL itself (``pg_walinspect``).

Without the DDL capture, the guard (``guard.py``) must place an uncaptured schema change from what the decoded
stream and the catalog still show, and where they show nothing (a DROP of an index or a view, a catalog row that a
later change rewrote) it can only cut at the last verified point: moments before the change are lost. The WAL
shows every such change: whatever a DDL does, it inserts, updates or deletes rows of the database's system
catalogs under its own transaction id. ``pg_walinspect`` (a contrib extension, PostgreSQL 15+) reads those
records, so the first transaction since the verified point that wrote a catalog row is found exactly, and the
chain ends right before it.

What counts: heap inserts, updates and deletes on the database's own catalogs (not the shared ones) by a
transaction, a subtransaction's mapped to its top-level transaction through the commit record. Not counted:
statistics (``pg_statistic``: ANALYZE) and large objects (their data lives in catalogs too), and in-place updates
(VACUUM's and ANALYZE's counters). A transaction that wrote a catalog row without changing the schema (a TRUNCATE,
a temporary table) is taken as a possible change: the cut may be before it, never after the change.

It is used only when it is there: an administrator installs it once (``CREATE EXTENSION pg_walinspect``) and,
for a backup role without SUPERUSER, grants ``EXECUTE ON FUNCTION pg_get_wal_records_info(pg_lsn, pg_lsn)`` (the
records' metadata only, no row data). Reading an hour of WAL costs a few seconds, paid only by a capture whose
chain ends at an uncaptured change.
"""

from __future__ import annotations

import logging
import re
import time

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

FUNCTION = "pg_get_wal_records_info(pg_lsn, pg_lsn)"
HOW_TO_ENABLE = (
    "to place them exactly, an administrator can run CREATE EXTENSION pg_walinspect on the source database and, "
    f"for a backup role without SUPERUSER, GRANT EXECUTE ON FUNCTION {FUNCTION} TO that role"
)
# catalogs whose rows are data or statistics, not schema
NOT_SCHEMA = ("pg_statistic", "pg_statistic_ext_data", "pg_largeobject", "pg_largeobject_metadata")
WRITES = [
    f"{kind}{init}" for kind in ("INSERT", "UPDATE", "HOT_UPDATE", "DELETE", "MULTI_INSERT") for init in ("", "+INIT")
]

_AVAILABLE = """
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_walinspect')
   AND pg_catalog.has_function_privilege(
         (SELECT p.oid FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            JOIN pg_catalog.pg_extension e ON e.extnamespace = n.oid AND e.extname = 'pg_walinspect'
           WHERE p.proname = 'pg_get_wal_records_info' AND p.pronargs = 2 LIMIT 1), 'EXECUTE')
"""

# the relfilenodes of the database's own catalogs, as the records' block references name them
_CATALOG_FILES = """
SELECT d.oid::text, string_agg(pg_catalog.pg_relation_filenode(c.oid)::text, '|')
  FROM pg_catalog.pg_class c, pg_catalog.pg_database d
 WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r' AND NOT c.relisshared
   AND c.relname <> ALL(%s) AND d.datname = pg_catalog.current_database()
 GROUP BY d.oid
"""

_RECORDS = """
SELECT r.xid::text, r.resource_manager, r.description
  FROM {schema}.pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn) r
 WHERE r.xid::text <> '0'
   AND ((r.resource_manager IN ('Heap', 'Heap2') AND r.record_type = ANY(%s) AND r.block_ref ~ %s)
        OR (r.resource_manager = 'Transaction' AND r.description LIKE '%%subxacts:%%'))
 ORDER BY r.start_lsn
"""
_SUBXACTS = re.compile(r"subxacts:((?: \d+)+)")


def wal_inspection_available(conn: psycopg.Connection) -> bool:
    """True when this connection's role can read the WAL's records with pg_walinspect."""
    return bool(conn.execute(_AVAILABLE).fetchone()[0])


def catalog_writers(conn: psycopg.Connection, start_lsn: str, end_lsn: str) -> set[str] | None:
    """The top-level transactions that wrote a schema catalog row between the two LSNs; None when
    pg_walinspect is not usable here (then nothing is known, not "none"). ``conn`` is not in autocommit: the
    records are streamed through a server-side cursor."""
    if not wal_inspection_available(conn):
        return None
    began = time.monotonic()
    schema = conn.execute(
        "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_walinspect'"
    ).fetchone()[0]
    # the WAL can be read up to what is flushed, and a range must not be empty
    end_lsn, empty = conn.execute(
        "SELECT e::text, %s::pg_lsn >= e FROM LEAST(%s::pg_lsn, pg_catalog.pg_current_wal_flush_lsn()) e",
        (start_lsn, end_lsn),
    ).fetchone()
    if empty:
        return set()
    db, files = conn.execute(_CATALOG_FILES, (list(NOT_SCHEMA),)).fetchone()
    pattern = rf"rel \d+/{db}/({files}) fork main"
    writers: set[str] = set()
    records = 0
    query = sql.SQL(_RECORDS).format(schema=sql.Identifier(schema))
    with conn.cursor(name="wedsync_wal_catalog") as cur:
        cur.itersize = 5_000
        cur.execute(query, (start_lsn, end_lsn, WRITES, pattern))
        for xid, manager, description in cur:
            records += 1
            if manager != "Transaction":
                writers.add(xid)
            elif (found := _SUBXACTS.search(description)) and writers.intersection(found.group(1).split()):
                writers.add(xid)  # a subtransaction wrote it: its top-level transaction is the one decoded
    log.info(
        "Read the WAL from %s to %s with pg_walinspect in %.1f s: %d transactions wrote catalog rows (%d records)",
        start_lsn,
        end_lsn,
        time.monotonic() - began,
        len(writers),
        records,
    )
    return writers
