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
rewrote (see the guard). So are its column count (``relnatts``, dropped columns included) and each column's
full type (with its modifier, which rows do not show), by attnum: when a later transaction rewrote a column's
catalog row, an earlier change to that row is gone without a trace, and these bound what it can have been.

``object_xids`` tells, per object, which transactions wrote which of its catalog rows that are still there
(the guard's evidence that a transaction *rewrote* a row an earlier, uncaptured change may have written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from wedsync_backup.logical.ddl import CAPTURE_SCHEMA

_USER_NAMESPACE = """
  (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')
     AND nspname NOT LIKE 'pg\\_%' AND nspname <> ALL({excluded}::text[]))
"""

# A table's pg_class row but for its column count, its toast table and what VACUUM and ANALYZE update in place:
# equal at two points, a transaction that rewrote the row between them only counted a column it added.
_CLASS_FIELDS = (
    "c.relname, c.relnamespace, c.reltype, c.relowner, c.relam, c.relfilenode, c.reltablespace, c.relpersistence, "
    "c.relkind, c.relchecks, c.relhasrules, c.relhastriggers, c.relhassubclass, c.relrowsecurity, "
    "c.relforcerowsecurity, c.relispopulated, c.relreplident, c.relispartition, c.relacl, c.reloptions, "
    "c.relpartbound::text"
)

# The objects fingerprint_query hashes, by OID (tables with their names, to match decoded rows).
_OBJECTS = """
SELECT 'relation', c.oid::text, n.nspname, c.relname, c.relkind::text,
       (SELECT array_agg(a.attname || '[' || pg_catalog.format_type(a.atttypid, NULL) || ']' ORDER BY a.attnum)
          FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       c.relnatts::int,
       (SELECT json_object_agg(a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod))
          FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       md5(row({_CLASS_FIELDS})::text)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'i', 'S', 'f') AND c.relnamespace IN {ns}
UNION ALL SELECT 'constraint', oid::text, NULL, conname, contype::text, NULL, NULL, NULL, NULL
  FROM pg_catalog.pg_constraint WHERE connamespace IN {ns}
UNION ALL SELECT 'function', oid::text, NULL, proname, prokind::text, NULL, NULL, NULL, NULL FROM pg_catalog.pg_proc
 WHERE pronamespace IN {ns}
UNION ALL SELECT 'trigger', t.oid::text, NULL, t.tgname, NULL, NULL, NULL, NULL, NULL FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND c.relnamespace IN {ns}
UNION ALL SELECT 'policy', p.oid::text, NULL, p.polname, NULL, NULL, NULL, NULL, NULL FROM pg_catalog.pg_policy p
  JOIN pg_catalog.pg_class c ON c.oid = p.polrelid WHERE c.relnamespace IN {ns}
"""


@dataclass(frozen=True)
class SchemaObjects:
    """``kind:oid`` of every fingerprinted object; by the same key, each table's (schema, name) and its columns
    as the decoder prints them (``name[type]``, type without modifiers)."""

    keys: frozenset[str]
    tables: dict[str, tuple[str, str]]
    shapes: dict[str, tuple[str, ...]]
    # per table: (relnatts, {attnum: full type}, a hash of its pg_class row as _CLASS_FIELDS reads it);
    # missing where not recorded (an earlier version's manifest)
    columns: dict[str, tuple[int, dict[int, str], str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "keys": sorted(self.keys),
            "tables": {k: [*v, list(self.shapes[k]), *self._columns_json(k)] for k, v in sorted(self.tables.items())},
        }

    def _columns_json(self, key: str) -> list[dict[str, Any]]:
        if key not in self.columns:
            return []
        natts, types, row = self.columns[key]
        return [{"natts": natts, "types": {str(n): t for n, t in sorted(types.items())}, "class": row}]

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> SchemaObjects | None:
        if not d or d.get("version") != 1:
            return None
        tables = d["tables"].items()
        columns = {k: _columns(v[3]) for k, v in tables if len(v) > 3}
        return cls(
            frozenset(d["keys"]), {k: (v[0], v[1]) for k, v in tables}, {k: tuple(v[2]) for k, v in tables}, columns
        )

    def dropped(self, now: SchemaObjects) -> tuple[list[tuple[str, str]], list[str]]:
        """(tables, other objects) present here and gone from ``now``."""
        gone = sorted(self.keys - now.keys)
        return [self.tables[k] for k in gone if k in self.tables], [k for k in gone if k not in self.tables]


def _columns(d: dict[str, Any]) -> tuple[int, dict[int, str], str]:
    return d["natts"], {int(n): t for n, t in d["types"].items()}, d["class"]


def read_schema_objects(conn: psycopg.Connection[Any], exclude_schemas: tuple[str, ...] = ()) -> SchemaObjects:
    """The objects as ``conn``'s snapshot sees them (read in the snapshot the fingerprint is read in).

    Run it under the source role's own search_path, as the capture's decoding session runs: a type outside
    the search_path prints schema-qualified, in both.
    """
    excluded = sql.Literal([*exclude_schemas, CAPTURE_SCHEMA]).as_string(None)
    query = _OBJECTS.format(ns=_USER_NAMESPACE.format(excluded=excluded), _CLASS_FIELDS=_CLASS_FIELDS)
    keys, tables, shapes, columns = set(), {}, {}, {}
    for kind, oid, schema, name, relkind, shape, natts, types, row in conn.execute(query.encode()).fetchall():
        key = f"{kind}:{oid}"
        keys.add(key)
        if kind == "relation" and relkind in ("r", "p"):
            tables[key], shapes[key] = (schema, name), tuple(shape or ())
            columns[key] = (natts, {int(n): t for n, t in (types or {}).items()}, row)
    return SchemaObjects(frozenset(keys), tables, shapes, columns)


# Per object, the transactions whose catalog rows of it are still there, and which rows: a relation's pg_class
# row ('class'; 'row' for an index or a sequence, which have no row type to carry their name), its columns
# ('col:<attnum>'), its row type ('type'), its pg_index row, and the rows of constraints, functions, triggers
# and policies ('row').
_OBJECT_XIDS = """
SELECT 'relation:' || c.oid::text, c.xmin::text, CASE WHEN c.relkind IN ('i', 'S') THEN 'row' ELSE 'class' END
  FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'i', 'S', 'f') AND c.relnamespace IN {ns}
UNION SELECT 'relation:' || a.attrelid::text, a.xmin::text, 'col:' || a.attnum::text
  FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'i', 'S', 'f') AND a.attnum > 0 AND c.relnamespace IN {ns}
UNION SELECT 'relation:' || t.typrelid::text, t.xmin::text, 'type' FROM pg_catalog.pg_type t
 WHERE t.typrelid <> 0 AND t.typnamespace IN {ns}
UNION SELECT 'relation:' || i.indexrelid::text, i.xmin::text, 'row' FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace IN {ns}
UNION SELECT 'constraint:' || oid::text, xmin::text, 'row' FROM pg_catalog.pg_constraint WHERE connamespace IN {ns}
UNION SELECT 'function:' || oid::text, xmin::text, 'row' FROM pg_catalog.pg_proc WHERE pronamespace IN {ns}
UNION SELECT 'trigger:' || t.oid::text, t.xmin::text, 'row' FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND c.relnamespace IN {ns}
UNION SELECT 'policy:' || p.oid::text, p.xmin::text, 'row' FROM pg_catalog.pg_policy p
  JOIN pg_catalog.pg_class c ON c.oid = p.polrelid WHERE c.relnamespace IN {ns}
"""


def object_xids(conn: psycopg.Connection[Any], exclude_schemas: tuple[str, ...] = ()) -> dict[str, dict[str, set[str]]]:
    """xid -> {object key (as in ``SchemaObjects.keys``) -> which of its catalog rows that transaction wrote}.

    A transaction that wrote a row of an object that existed at the verified point rewrote it: an earlier
    change to the same row, by a transaction that left no other row, is gone without a trace (see guard.py).
    """
    excluded = sql.Literal([*exclude_schemas, CAPTURE_SCHEMA]).as_string(None)
    query = _OBJECT_XIDS.format(ns=_USER_NAMESPACE.format(excluded=excluded))
    out: dict[str, dict[str, set[str]]] = {}
    for key, xid, part in conn.execute(query.encode()).fetchall():
        out.setdefault(xid, {}).setdefault(key, set()).add(part)
    return out
