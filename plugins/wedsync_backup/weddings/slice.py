"""What a wedding's data is: its root row plus every row that belongs to it, read from the source's catalog.

A table is a *direct* member when it references the root table's key (a foreign key, or a soft reference from
the policy): its rows belong to the wedding their column names, and nothing else pulls them in (a plus-one who
is a guest of another wedding stays in that wedding). A table without such a column is a *path* member when a
foreign key leads to a member table (a seat that references a guest): its rows belong to the weddings of the
rows they reference. Self-references never decide membership. Partitioned tables are read through their
partitioned parent (a partition is never a table of its own); plain tables are read with ONLY so inheritance
children are not counted twice. *Parents* are the tables outside the slice that slice rows point at (clients,
suppliers, users...), followed transitively, so a wedding can be restored where they are missing.

Every SQL built here binds the wedding ids as ``%(wedding_ids)s`` (a list of text) and casts them to the
compared column's type, so the source's indexes serve the lookup. ``with_wedding_id=True`` prepends a column
``__wedding_id`` (text) naming the wedding each row is for: a row shared by two requested weddings comes once
per wedding, a row of one wedding once (even in a table without a primary key, duplicates stay duplicates).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from wedsync_backup.errors import ConfigError
from wedsync_backup.weddings.policy import WeddingsPolicy

WEDDING_ID = "__wedding_id"
IDS = sql.Placeholder("wedding_ids")
QName = tuple[str, str]


@dataclass(frozen=True)
class ForeignKey:
    """``child(columns)`` references ``parent(ref_columns)``; soft references have no name in the catalog."""

    name: str
    child: QName
    columns: tuple[str, ...]
    parent: QName
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class _Catalog:
    kinds: dict[QName, str]
    columns: dict[QName, tuple[str, ...]]
    types: dict[QName, dict[str, str]]
    generated: dict[QName, tuple[str, ...]]
    keys: dict[QName, tuple[str, ...]]
    fks: tuple[ForeignKey, ...]


@dataclass(frozen=True)
class SliceTable:
    """One table of a wedding's slice (or, in ``WeddingSlice.parents``, one parent table)."""

    schema: str
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...] | None
    membership: str  # root | direct | path | parent
    data_type: str | None = None
    kind: str = "r"  # r (plain) or p (partitioned)
    column_types: dict[str, str] = field(default_factory=dict, compare=False)
    generated_columns: tuple[str, ...] = ()
    direct_columns: tuple[str, ...] = ()  # root: its key; direct: the columns holding the wedding id
    paths: tuple[ForeignKey, ...] = ()  # path: the foreign keys membership follows; parent: the references to it
    foreign_keys: tuple[ForeignKey, ...] = ()
    _plain: sql.Composable = field(default_factory=lambda: sql.SQL(""), repr=False, compare=False)
    _with_id: sql.Composable = field(default_factory=lambda: sql.SQL(""), repr=False, compare=False)

    @property
    def qualified(self) -> QName:
        return (self.schema, self.name)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def display(self) -> str:
        """schema.table as written in SQL (quoted where needed), for messages."""
        return f"{_q(self.schema)}.{_q(self.name)}"

    def member_rows_sql(self, with_wedding_id: bool = False) -> sql.Composed:
        """SELECT this table's rows that belong to the weddings bound as ``%(wedding_ids)s``."""
        return sql.Composed([self._with_id if with_wedding_id else self._plain])

    def referenced_rows_sql(self, with_wedding_id: bool = False) -> sql.Composed:
        """For a parent table: SELECT its rows that the weddings' rows reference (directly or via parents)."""
        return self.member_rows_sql(with_wedding_id)


@dataclass(frozen=True)
class WeddingSlice:
    root: SliceTable
    tables: tuple[SliceTable, ...]  # root first, then referenced before referencing
    parents: tuple[SliceTable, ...]  # referenced before referencing (insert order)
    policy: WeddingsPolicy

    def table(self, schema: str, name: str) -> SliceTable:
        for t in (*self.tables, *self.parents):
            if t.qualified == (schema, name):
                return t
        raise ConfigError(f"Table {_q(schema)}.{_q(name)} is not part of a wedding's slice or its parents")

    def tables_for(self, data_types: Iterable[str] | None) -> tuple[SliceTable, ...]:
        """The slice's tables holding these data types (None: every table, root included)."""
        if data_types is None:
            return self.tables
        wanted = list(data_types)
        unknown = [d for d in wanted if d not in self.policy.data_types]
        if unknown:
            raise ConfigError(
                f"Unknown wedding data type(s) {', '.join(map(repr, unknown))}",
                f"the policy's weddings.data_types defines {', '.join(self.policy.data_types) or 'none'}",
                "use those names, or add the type to weddings.data_types in the policy",
            )
        return tuple(t for t in self.tables if t.data_type in wanted)

    @property
    def wedding_id_type(self) -> str:
        return self.root.column_types[self.policy.key]


def _q(name: str) -> str:
    return name if name.isidentifier() and name == name.lower() else '"' + name.replace('"', '""') + '"'


def _read_catalog(conn: Any) -> _Catalog:
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated,
               ARRAY(SELECT k.attname FROM pg_constraint pk
                     JOIN LATERAL unnest(pk.conkey) WITH ORDINALITY u(n, i) ON true
                     JOIN pg_attribute k ON k.attrelid = pk.conrelid AND k.attnum = u.n
                     WHERE pk.conrelid = c.oid AND pk.contype = 'p' ORDER BY u.i)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
        ORDER BY n.nspname, c.relname, a.attnum
        """
    ).fetchall()
    kinds: dict[QName, str] = {}
    columns: dict[QName, list[str]] = {}
    types: dict[QName, dict[str, str]] = {}
    generated: dict[QName, list[str]] = {}
    keys: dict[QName, tuple[str, ...]] = {}
    for schema, table, kind, col, typ, gen, pk in rows:
        q = (schema, table)
        kinds[q] = kind
        columns.setdefault(q, []).append(col)
        types.setdefault(q, {})[col] = typ
        generated.setdefault(q, [])
        if gen:
            generated[q].append(col)
        if pk:
            keys[q] = tuple(pk)
    fk_rows = conn.execute(
        """
        WITH f AS (
            SELECT con.conname, con.conrelid, con.confrelid,
                   coalesce(pg_partition_root(con.conrelid), con.conrelid) AS child,
                   coalesce(pg_partition_root(con.confrelid), con.confrelid) AS parent,
                   ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY u(n, i)
                         JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = u.n ORDER BY u.i) AS cols,
                   ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY u(n, i)
                         JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = u.n ORDER BY u.i) AS refs
            FROM pg_constraint con WHERE con.contype = 'f' AND con.conparentid = 0
        )
        SELECT DISTINCT f.conname, cn.nspname, cc.relname, f.cols, pn.nspname, pc.relname, f.refs
        FROM f
        JOIN pg_class cc ON cc.oid = f.child JOIN pg_namespace cn ON cn.oid = cc.relnamespace
        JOIN pg_class pc ON pc.oid = f.parent JOIN pg_namespace pn ON pn.oid = pc.relnamespace
        ORDER BY 2, 3, 1
        """
    ).fetchall()
    fks = tuple(
        ForeignKey(name, (cs, ct), tuple(cols), (ps, pt), tuple(refs))
        for name, cs, ct, cols, ps, pt, refs in fk_rows
        if (cs, ct) in kinds and (ps, pt) in kinds
    )
    return _Catalog(
        kinds,
        {q: tuple(c) for q, c in columns.items()},
        types,
        {q: tuple(g) for q, g in generated.items()},
        keys,
        fks,
    )


def _order(nodes: list[QName], deps: dict[QName, set[QName]]) -> tuple[list[QName], dict[QName, set[QName]]]:
    """Nodes with every dependency first (Kahn); a cycle is broken at its smallest name, whose unmet
    dependencies are dropped. Returns the order and the dependencies each node may rely on."""
    remaining = sorted(nodes)
    done: list[QName] = []
    kept: dict[QName, set[QName]] = {}
    while remaining:
        ready = [n for n in remaining if deps.get(n, set()) <= set(done)]
        pick = ready[0] if ready else remaining[0]
        kept[pick] = deps.get(pick, set()) & set(done)
        done.append(pick)
        remaining.remove(pick)
    return done, kept


def _ident(q: QName) -> sql.Identifier:
    return sql.Identifier(*q)


def _from(cat: _Catalog, q: QName) -> sql.Composed:
    """FROM target: a partitioned table whole (its partitions once each), a plain table without inheritors."""
    return sql.SQL("{} {} t").format(sql.SQL("" if cat.kinds[q] == "p" else "ONLY"), _ident(q))


def _cols(alias: str, cols: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in cols)


def _eq(a: str, a_cols: tuple[str, ...], b: str, b_cols: tuple[str, ...]) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(a, x), sql.Identifier(b, y))
        for x, y in zip(a_cols, b_cols, strict=True)
    )


def _any(col: str, typ: str) -> sql.Composed:
    return sql.SQL("{} = ANY(CAST({} AS {}[]))").format(sql.Identifier("t", col), IDS, sql.SQL(typ))


def _direct_sql(cat: _Catalog, q: QName, cols: tuple[str, ...]) -> tuple[sql.Composed, sql.Composed]:
    """Rows whose wedding-id column(s) name a requested wedding; per wedding once with the id prepended."""
    typ = cat.types[q]
    plain = sql.SQL("SELECT t.* FROM {} WHERE {}").format(
        _from(cat, q), sql.SQL(" OR ").join(_any(c, typ[c]) for c in cols)
    )
    parts = []
    for i, c in enumerate(cols):
        cond = [_any(c, typ[c])] + [
            sql.SQL("{}::text IS DISTINCT FROM {}::text").format(sql.Identifier("t", c), sql.Identifier("t", e))
            for e in cols[:i]
        ]
        parts.append(
            sql.SQL("SELECT {}::text AS {}, t.* FROM {} WHERE {}").format(
                sql.Identifier("t", c), sql.Identifier(WEDDING_ID), _from(cat, q), sql.SQL(" AND ").join(cond)
            )
        )
    return plain, sql.SQL(" UNION ALL ").join(parts)


def _path_sql(
    cat: _Catalog, q: QName, paths: list[ForeignKey], built: dict[QName, SliceTable]
) -> tuple[sql.Composed, sql.Composed]:
    """Rows that reference member rows; per wedding once, whichever of the paths leads there."""
    plain = sql.SQL("SELECT t.* FROM {} WHERE {}").format(
        _from(cat, q),
        sql.SQL(" OR ").join(
            sql.SQL("({}) IN (SELECT {} FROM ({}) d)").format(
                _cols("t", fk.columns), _cols("d", fk.ref_columns), built[fk.parent].member_rows_sql()
            )
            for fk in paths
        ),
    )
    parts = []
    for i, fk in enumerate(paths):
        earlier = [
            sql.SQL("NOT EXISTS (SELECT 1 FROM ({}) e WHERE {} AND e.{} = d.{})").format(
                built[p.parent].member_rows_sql(True),
                _eq("e", p.ref_columns, "t", p.columns),
                sql.Identifier(WEDDING_ID),
                sql.Identifier(WEDDING_ID),
            )
            for p in paths[:i]
        ]
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(earlier) if earlier else sql.SQL("")
        parts.append(
            sql.SQL("SELECT d.{} AS {}, t.* FROM {} JOIN ({}) d ON {}{}").format(
                sql.Identifier(WEDDING_ID),
                sql.Identifier(WEDDING_ID),
                _from(cat, q),
                built[fk.parent].member_rows_sql(True),
                _eq("t", fk.columns, "d", fk.ref_columns),
                where,
            )
        )
    return plain, sql.SQL(" UNION ALL ").join(parts)


def _parent_sql(
    cat: _Catalog, q: QName, refs: list[ForeignKey], built: dict[QName, SliceTable]
) -> tuple[sql.Composed, sql.Composed]:
    """A parent's rows that the given references point at, keyed by its primary key (else the first
    referenced columns, unique by the foreign key's own rule)."""
    canon = cat.keys.get(q) or refs[0].ref_columns
    names = [sql.Identifier(f"k{i}") for i in range(len(canon))]

    def keys(with_id: bool) -> sql.Composed:
        parts = []
        for fk in refs:
            src = built[fk.child].member_rows_sql(with_id)
            wid = sql.SQL("r.{}, ").format(sql.Identifier(WEDDING_ID)) if with_id else sql.SQL("")
            if fk.ref_columns == canon:
                picked = sql.SQL(", ").join(
                    sql.SQL("{} AS {}").format(sql.Identifier("r", c), n)
                    for c, n in zip(fk.columns, names, strict=True)
                )
                parts.append(
                    sql.SQL("SELECT {}{} FROM ({}) r WHERE {}").format(
                        wid,
                        picked,
                        src,
                        sql.SQL(" AND ").join(
                            sql.SQL("{} IS NOT NULL").format(sql.Identifier("r", c)) for c in fk.columns
                        ),
                    )
                )
            else:
                picked = sql.SQL(", ").join(
                    sql.SQL("{} AS {}").format(sql.Identifier("p", c), n) for c, n in zip(canon, names, strict=True)
                )
                parts.append(
                    sql.SQL("SELECT {}{} FROM ({}) r JOIN {} p ON {}").format(
                        wid, picked, src, _ident(q), _eq("p", fk.ref_columns, "r", fk.columns)
                    )
                )
        return sql.SQL(" UNION ").join(parts)

    plain = sql.SQL("SELECT t.* FROM {} WHERE ({}) IN (SELECT {} FROM ({}) x)").format(
        _from(cat, q), _cols("t", canon), sql.SQL(", ").join(names), keys(False)
    )
    with_id = sql.SQL("SELECT x.{} AS {}, t.* FROM {} JOIN ({}) x ON {}").format(
        sql.Identifier(WEDDING_ID),
        sql.Identifier(WEDDING_ID),
        _from(cat, q),
        keys(True),
        sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier("t", c), sql.Identifier("x", f"k{i}")) for i, c in enumerate(canon)
        ),
    )
    return plain, with_id


def _data_type_of(policy: WeddingsPolicy, members: set[QName]) -> dict[QName, str]:
    """Member table -> its data type; a listed table outside the slice is a ConfigError naming it."""
    out: dict[QName, str] = {}
    for dtype, listed in policy.data_types.items():
        for schema, table in listed:
            found = [m for m in members if m[1] == table and (not schema or m[0] == schema)]
            where = f"weddings.data_types.{dtype}"
            shown = f"{_q(schema)}.{_q(table)}" if schema else _q(table)
            if not found:
                raise ConfigError(
                    f"Backup policy field '{where}' names table {shown}, which is not part of a wedding's slice",
                    "it does not exist in the source or has no wedding id column and no foreign-key path to one",
                    "fix the table name, or add a soft reference for it in weddings.soft_references",
                )
            if len(found) > 1:
                raise ConfigError(
                    f"Backup policy field '{where}' names table {shown}, which exists in several schemas",
                    fix="qualify it with its schema",
                )
            out[found[0]] = dtype
    return out


def _root_and_direct(policy: WeddingsPolicy, cat: _Catalog) -> dict[QName, list[str]]:
    """The root (its key) and every direct member with the columns that hold the wedding id."""
    root = policy.table
    shown = f"{_q(root[0])}.{_q(root[1])}"
    if root not in cat.kinds:
        raise ConfigError(
            f"Backup policy field 'weddings.table' names {shown}, which does not exist in the source",
            fix='set weddings.table to the wedding table (quote names that need it: \'"Wed Data"."Weddings"\')',
        )
    for key in ("key", "date_column"):
        col = getattr(policy, key)
        if col not in cat.columns[root]:
            raise ConfigError(
                f"Backup policy field 'weddings.{key}' names column {col!r}, which {shown} does not have",
                f"its columns are {', '.join(cat.columns[root])}",
                f"set weddings.{key} to one of them",
            )
    direct: dict[QName, list[str]] = {root: [policy.key]}
    for fk in cat.fks:
        if fk.parent == root and fk.child != root and fk.ref_columns == (policy.key,):
            direct.setdefault(fk.child, []).append(fk.columns[0])
    for i, soft in enumerate(policy.soft_references):
        q = (soft.schema, soft.table)
        where = f"weddings.soft_references[{i}]"
        if q not in cat.kinds or soft.column not in cat.columns[q]:
            raise ConfigError(
                f"Backup policy field '{where}' names {_q(soft.schema)}.{_q(soft.table)}.{_q(soft.column)},"
                " which does not exist in the source",
                fix="name an existing schema.table.column holding wedding ids",
            )
        if q != root and soft.column not in direct.setdefault(q, []):
            direct[q].append(soft.column)
    return direct


def discover_slice(conn: Any, policy: WeddingsPolicy) -> WeddingSlice:
    """Read the source's catalog (``conn``: a psycopg connection) and work out a wedding's slice."""
    cat = _read_catalog(conn)
    direct = _root_and_direct(policy, cat)
    root = policy.table
    members = set(direct)
    while True:  # every table a foreign key leads from into the slice, until nothing changes
        more = {fk.child for fk in cat.fks if fk.parent in members and fk.child not in members}
        if not more:
            break
        members |= more
    fks_of: dict[QName, list[ForeignKey]] = {}
    for fk in cat.fks:
        fks_of.setdefault(fk.child, []).append(fk)
    deps = {
        q: {fk.parent for fk in fks_of.get(q, []) if fk.parent in members and fk.parent not in (q, root)}
        for q in members
        if q != root
    }
    order, allowed = _order([q for q in members if q != root], deps)
    dtypes = _data_type_of(policy, members)
    built: dict[QName, SliceTable] = {}

    def make(q: QName, membership: str, plain: sql.Composed, with_id: sql.Composed, **kw: Any) -> SliceTable:
        t = SliceTable(
            schema=q[0],
            name=q[1],
            columns=cat.columns[q],
            key=cat.keys.get(q),
            membership=membership,
            data_type=dtypes.get(q),
            kind=cat.kinds[q],
            column_types=cat.types[q],
            generated_columns=cat.generated[q],
            foreign_keys=tuple(fks_of.get(q, [])),
            _plain=plain,
            _with_id=with_id,
            **kw,
        )
        built[q] = t
        return t

    make(root, "root", *_direct_sql(cat, root, (policy.key,)), direct_columns=(policy.key,))
    for q in order:
        if q in direct:
            cols = tuple(direct[q])
            make(q, "direct", *_direct_sql(cat, q, cols), direct_columns=cols)
        else:
            paths = [fk for fk in fks_of[q] if fk.parent == root or fk.parent in allowed[q]]
            make(q, "path", *_path_sql(cat, q, paths, built), paths=tuple(paths))
    tables = (built[root], *(built[q] for q in order))
    return WeddingSlice(built[root], tables, _parents(cat, members, fks_of, built), policy)


def _parents(
    cat: _Catalog, members: set[QName], fks_of: dict[QName, list[ForeignKey]], built: dict[QName, SliceTable]
) -> tuple[SliceTable, ...]:
    parents: set[QName] = set()
    frontier = set(members)
    while frontier:
        found = {fk.parent for q in frontier for fk in fks_of.get(q, []) if fk.parent not in members | parents}
        parents |= found
        frontier = found
    # a parent's rows are known once every parent referencing it is known: referencing first
    deps = {
        p: {fk.child for fk in cat.fks if fk.parent == p and fk.child in parents and fk.child != p} for p in parents
    }
    order, allowed = _order(list(parents), deps)
    out = []
    for p in order:
        refs = [fk for fk in cat.fks if fk.parent == p and (fk.child in members or fk.child in allowed[p])]
        plain, with_id = _parent_sql(cat, p, refs, built)
        t = SliceTable(
            schema=p[0],
            name=p[1],
            columns=cat.columns[p],
            key=cat.keys.get(p),
            membership="parent",
            kind=cat.kinds[p],
            column_types=cat.types[p],
            generated_columns=cat.generated[p],
            paths=tuple(refs),
            foreign_keys=tuple(fks_of.get(p, [])),
            _plain=plain,
            _with_id=with_id,
        )
        built[p] = t
        out.append(t)
    return tuple(reversed(out))
