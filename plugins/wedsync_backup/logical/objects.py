"""The schema's objects by OID at a chain's verified point: how an uncaptured DROP is found and bounded.

A change the DDL capture did not see is detected by the schema fingerprint (``ddl.fingerprint_query``), and the
guard (``guard.py``) places the chain's cut before the first transaction that may have made it. Creations and
alterations leave catalog rows carrying the xid of the transaction that wrote them (``incremental.CATALOG_XIDS``),
so that transaction is found in the decoded stream. A DROP leaves no row at all: a transaction that drops an
object and writes rows looks like any other. So every chain point also records the OIDs of the objects the
fingerprint covers (relations, constraints, functions, triggers, policies). At the next capture, an OID that is
gone was dropped (or dropped and re-created: the new object has a new OID) somewhere after that point, and:

* a dropped table existed up to the last transaction that decoded one of its rows (the decoder found it in the
  catalog of that moment); that transaction may itself have dropped it after writing, so the cut goes before it;
* any other dropped object (an index, a constraint, a view, a function...) leaves nothing in the stream to
  place it by, so the cut goes back to the verified point itself.

Both err on the early side: never after the drop. A dropped OID also ends the chain when the fingerprint came
out equal (a table dropped and re-created the same, its rows gone without a decoded DELETE).

Each table's columns are recorded as test_decoding prints them (``name[type]``, the type without modifiers):
a row decoded with other columns shows a change nothing captured, even one whose catalog rows a later change
rewrote (see the guard).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from wedsync_backup.logical.ddl import CAPTURE_SCHEMA

_USER_NAMESPACE = """
  (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')
     AND nspname NOT LIKE 'pg\\_%' AND nspname <> ALL({excluded}::text[]))
"""

# The objects fingerprint_query hashes, by OID (tables with their names, to match decoded rows).
_OBJECTS = """
SELECT 'relation', c.oid::text, n.nspname, c.relname, c.relkind::text,
       (SELECT array_agg(a.attname || '[' || pg_catalog.format_type(a.atttypid, NULL) || ']' ORDER BY a.attnum)
          FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'i', 'S', 'f') AND c.relnamespace IN {ns}
UNION ALL SELECT 'constraint', oid::text, NULL, conname, contype::text, NULL FROM pg_catalog.pg_constraint
 WHERE connamespace IN {ns}
UNION ALL SELECT 'function', oid::text, NULL, proname, prokind::text, NULL FROM pg_catalog.pg_proc
 WHERE pronamespace IN {ns}
UNION ALL SELECT 'trigger', t.oid::text, NULL, t.tgname, NULL, NULL FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND c.relnamespace IN {ns}
UNION ALL SELECT 'policy', p.oid::text, NULL, p.polname, NULL, NULL FROM pg_catalog.pg_policy p
  JOIN pg_catalog.pg_class c ON c.oid = p.polrelid WHERE c.relnamespace IN {ns}
"""


@dataclass(frozen=True)
class SchemaObjects:
    """``kind:oid`` of every fingerprinted object; by the same key, each table's (schema, name) and its columns
    as the decoder prints them (``name[type]``, type without modifiers)."""

    keys: frozenset[str]
    tables: dict[str, tuple[str, str]]
    shapes: dict[str, tuple[str, ...]]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "keys": sorted(self.keys),
            "tables": {k: [*v, list(self.shapes[k])] for k, v in sorted(self.tables.items())},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> SchemaObjects | None:
        if not d or d.get("version") != 1:
            return None
        tables = d["tables"].items()
        return cls(frozenset(d["keys"]), {k: (v[0], v[1]) for k, v in tables}, {k: tuple(v[2]) for k, v in tables})

    def dropped(self, now: SchemaObjects) -> tuple[list[tuple[str, str]], list[str]]:
        """(tables, other objects) present here and gone from ``now``."""
        gone = sorted(self.keys - now.keys)
        return [self.tables[k] for k in gone if k in self.tables], [k for k in gone if k not in self.tables]


def read_schema_objects(conn: psycopg.Connection[Any], exclude_schemas: tuple[str, ...] = ()) -> SchemaObjects:
    """The objects as ``conn``'s snapshot sees them (read in the snapshot the fingerprint is read in).

    Run it under the source role's own search_path, as the capture's decoding session runs: a type outside
    the search_path prints schema-qualified, in both.
    """
    excluded = sql.Literal([*exclude_schemas, CAPTURE_SCHEMA]).as_string(None)
    query = _OBJECTS.format(ns=_USER_NAMESPACE.format(excluded=excluded))
    keys, tables, shapes = set(), {}, {}
    for kind, oid, schema, name, relkind, columns in conn.execute(query.encode()).fetchall():
        key = f"{kind}:{oid}"
        keys.add(key)
        if kind == "relation" and relkind in ("r", "p"):
            tables[key], shapes[key] = (schema, name), tuple(columns or ())
    return SchemaObjects(frozenset(keys), tables, shapes)


# Per table, the transactions whose catalog rows of it (its pg_class row, its columns) are still there.
_TABLE_XIDS = """
SELECT 'relation:' || c.oid::text, c.xmin::text FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p')
UNION SELECT 'relation:' || a.attrelid::text, a.xmin::text
  FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
 WHERE c.relkind IN ('r', 'p') AND a.attnum > 0
"""


def table_xids(conn: psycopg.Connection[Any]) -> dict[str, set[str]]:
    """``relation:oid`` -> the xids of its pg_class and pg_attribute rows: which transactions changed it last.

    The guard trusts such a transaction to place a change its rows show, unless rows decoded in between say
    the table changed earlier (see guard.py).
    """
    out: dict[str, set[str]] = {}
    for key, xid in conn.execute(_TABLE_XIDS).fetchall():
        out.setdefault(key, set()).add(xid)
    return out
