"""Schema changes in the change stream: a source-side DDL capture, installed by the full backup's preflight.

Logical decoding carries rows, not DDL. To let an incremental chain continue through a schema change, two
event triggers (``ddl_command_start`` / ``ddl_command_end``, plus ``sql_drop``) call functions in our own schema
``_wedsync_backup``; the end trigger emits one *transactional* logical message (prefix ``wedsync.ddl``) per
command, so the message is decoded in place, in commit order, among the rows of its transaction.

A message says which top-level query the command came from (``current_query()``, sent once per transaction
and group), the command's ordinal in that query (a simple query may hold several statements), the effective
search_path and role, whether it ran nested (inside a function or DO block: then the query text is not the
command), whether it only touched temporary objects or excluded schemas (nothing to replay), and the schema
fingerprint before and after it. The capture side (``ChangeGuard`` in ``logical/guard.py``) turns each message
into the exact statement to replay, or decides that the chain must end before it.

Creating event triggers needs SUPERUSER (PostgreSQL 15). Without it the capture is not installed and the chain
falls back to ending at the first uncaptured change (see the guard). Our schema, functions and triggers are
never part of what is backed up: the export, the fingerprint and the restore leave them out. Remove them with
``python -m wedsync_backup.logical.ddl remove '<conninfo>'``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from wedsync_backup.pg import PgTarget, target_from_conninfo

CAPTURE_SCHEMA = "_wedsync_backup"
MESSAGE_PREFIX = "wedsync.ddl"
FENCE_PREFIX = "wedsync.ddl.fence"
# Our own transactions on the source (install, removal, a capture's flush): they write no user rows, and
# would otherwise look like a schema-only change to the uncaptured-change check (see guard.py).
MARKER_PREFIX = "wedsync.marker"
VERSION = 1
TRIGGERS = ("wedsync_backup_ddl_start", "wedsync_backup_ddl_end", "wedsync_backup_ddl_drop")


FINGERPRINT_VERSION = 3  # what full backups record and the source-side capture computes
FINGERPRINT_VERSIONS = (2, 3)  # what a chain may have started under (an earlier chain keeps its own version)
EARLIER_FINGERPRINT_VERSIONS = tuple(v for v in FINGERPRINT_VERSIONS if v != FINGERPRINT_VERSION)


def fingerprint_version(fingerprint: str | None) -> int | None:
    """The version of a recorded fingerprint (``v3:...`` -> 3); None for one this code cannot recompute."""
    for version in FINGERPRINT_VERSIONS:
        if str(fingerprint or "").startswith(f"v{version}:"):
            return version
    return None


def fingerprint_query(exclude_schemas: tuple[str, ...] | list[str] = (), version: int = FINGERPRINT_VERSION) -> str:
    """A hash of the user schema: one text for both the Python check and the source-side function.

    The excluded schemas are literals, so there are no parameters. Temporary schemas, the system schemas and our
    capture schema never count. It must run with ``search_path = pg_catalog`` (names print schema-qualified,
    whoever runs it). Version 3 covers everything a restore brings back that DDL can change: relations with their
    owner, grants, options, comment and definition (a view's body, an index's, a sequence's parameters); columns
    with type, default, NOT NULL, identity, collation, grants and comment; constraints, functions (whole
    definition, owner, grants), triggers (definition, enabled), policies (expressions), rules, schemas, types
    (enum labels, domain base and default) and extensions. Version 2 (relations, columns and types, constraints,
    function bodies, trigger and policy names) is kept for chains that started under it.
    """
    excluded = sql.Literal([*exclude_schemas, CAPTURE_SCHEMA]).as_string(None)
    user_ns = (
        f"n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' "
        f"AND n.nspname <> ALL({excluded}::text[])"
    )
    if version == 2:
        return _fingerprint_v2(excluded)
    if version != 3:
        raise ValueError(f"unknown schema fingerprint version {version}")
    return f"""
    SELECT 'v3:' || md5(string_agg(x, E'\\n' ORDER BY x)) FROM (
      SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || pg_get_userbyid(c.relowner) || ':'
             || coalesce(c.relacl::text, '') || ':' || c.relpersistence::text || ':' || c.relrowsecurity::text
             || c.relforcerowsecurity::text || ':' || coalesce(array_to_string(c.reloptions, ','), '') || ':'
             || coalesce(pg_get_expr(c.relpartbound, c.oid), '') || ':'
             || coalesce(md5(obj_description(c.oid, 'pg_class')), '') || ':'
             || CASE WHEN c.relkind IN ('v', 'm') THEN md5(pg_get_viewdef(c.oid))
                     WHEN c.relkind IN ('i', 'I') THEN pg_get_indexdef(c.oid)
                     WHEN c.relkind = 'S' THEN coalesce((
                       SELECT concat_ws(',', q.seqtypid::regtype, q.seqstart, q.seqincrement, q.seqmax, q.seqmin,
                                        q.seqcache, q.seqcycle)
                         FROM pg_catalog.pg_sequence q WHERE q.seqrelid = c.oid), '')
                     ELSE '' END || ':' ||
             coalesce((SELECT string_agg(concat_ws(' ', a.attname, format_type(a.atttypid, a.atttypmod),
                                                   a.attgenerated::text || a.attidentity::text, a.attnotnull,
                                                   pg_get_expr(d.adbin, d.adrelid), co.collname, a.attacl::text,
                                                   a.attstorage::text, a.attstattarget,
                                                   md5(col_description(c.oid, a.attnum))), ',' ORDER BY a.attnum)
                       FROM pg_catalog.pg_attribute a
                       LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                       LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '') AS x
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'i', 'I', 'S', 'f', 'c') AND {user_ns}
      UNION ALL
      SELECT 'constraint ' || k.conrelid::regclass::text || ' ' || k.contypid::regtype::text || ' ' || k.conname
             || ' ' || pg_get_constraintdef(k.oid) || ' ' || coalesce(md5(obj_description(k.oid, 'pg_constraint')), '')
        FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_namespace n ON n.oid = k.connamespace
       WHERE {user_ns}
      UNION ALL
      SELECT 'function ' || p.oid::regprocedure::text || ' ' || pg_get_userbyid(p.proowner) || ' '
             || coalesce(p.proacl::text, '') || ' '
             || CASE WHEN p.prokind = 'a' THEN md5(p.prosrc) ELSE md5(pg_get_functiondef(p.oid)) END || ' '
             || coalesce(md5(obj_description(p.oid, 'pg_proc')), '')
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
       WHERE {user_ns}
      UNION ALL
      SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
        FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE NOT t.tgisinternal AND {user_ns}
      UNION ALL
      SELECT 'policy ' || o.polrelid::regclass::text || ' ' || o.polname || ' ' || o.polcmd::text
             || o.polpermissive::text || ' ' || o.polroles::text || ' '
             || coalesce(pg_get_expr(o.polqual, o.polrelid), '') || ' '
             || coalesce(pg_get_expr(o.polwithcheck, o.polrelid), '')
        FROM pg_catalog.pg_policy o JOIN pg_catalog.pg_class c ON c.oid = o.polrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE {user_ns}
      UNION ALL
      SELECT 'rule ' || pg_get_ruledef(r.oid) || ' ' || r.ev_enabled::text
        FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE r.rulename <> '_RETURN' AND {user_ns}
      UNION ALL
      SELECT 'schema ' || n.nspname || ' ' || pg_get_userbyid(n.nspowner) || ' ' || coalesce(n.nspacl::text, '')
             || ' ' || coalesce(md5(obj_description(n.oid, 'pg_namespace')), '')
        FROM pg_catalog.pg_namespace n
       WHERE {user_ns}
      UNION ALL
      SELECT 'type ' || t.oid::regtype::text || ' ' || t.typtype::text || ' ' || pg_get_userbyid(t.typowner) || ' '
             || coalesce(t.typacl::text, '') || ' ' || coalesce(md5(obj_description(t.oid, 'pg_type')), '') || ' '
             || CASE t.typtype
                  WHEN 'd' THEN concat_ws(' ', format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault)
                  WHEN 'e' THEN coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                                            FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid), '')
                  ELSE '' END
        FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
       WHERE t.typrelid = 0 AND {user_ns}
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type el WHERE el.typarray = t.oid)
      UNION ALL
      SELECT 'extension ' || x.extname || ' ' || x.extversion || ' ' || n.nspname
        FROM pg_catalog.pg_extension x JOIN pg_catalog.pg_namespace n ON n.oid = x.extnamespace
    ) s
    """


def _fingerprint_v2(excluded: str) -> str:
    """Version 2, as chains recorded it before version 3 (relations, columns and their types, constraints,
    function bodies, trigger and policy names)."""
    return f"""
    SELECT 'v2:' || md5(string_agg(x, E'\\n' ORDER BY x)) FROM (
      SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' ||
             coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                         || ' ' || a.attgenerated::text, ',' ORDER BY a.attnum)
                       FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                         AND NOT a.attisdropped), '') AS x
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'i', 'S', 'f')
         AND n.nspname NOT IN ('pg_catalog', 'information_schema')
         AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> ALL({excluded}::text[])
      UNION ALL
      SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
        FROM pg_catalog.pg_constraint
       WHERE connamespace NOT IN (SELECT oid FROM pg_catalog.pg_namespace
                                   WHERE nspname IN ('pg_catalog', 'information_schema')
                                      OR nspname LIKE 'pg\\_%' OR nspname = ANY({excluded}::text[]))
      UNION ALL
      SELECT 'function ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc)
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
         AND n.nspname <> ALL({excluded}::text[])
      UNION ALL
      SELECT 'trigger ' || tgrelid::regclass::text || ' ' || tgname FROM pg_catalog.pg_trigger
       WHERE NOT tgisinternal
      UNION ALL
      SELECT 'policy ' || polrelid::regclass::text || ' ' || polname FROM pg_catalog.pg_policy
    ) s
    """


def _install_sql(exclude_schemas: tuple[str, ...]) -> str:
    skip = sql.Literal([*exclude_schemas, CAPTURE_SCHEMA]).as_string(None)
    warn = (
        "RAISE WARNING 'wedsync backup: the schema change capture failed (%%): the incremental chain will end "
        "at this change and a full backup will start a new one', SQLERRM;"
    ).replace("%%", "%")
    return f"""
CREATE SCHEMA IF NOT EXISTS {CAPTURE_SCHEMA};
REVOKE ALL ON SCHEMA {CAPTURE_SCHEMA} FROM PUBLIC;
GRANT USAGE ON SCHEMA {CAPTURE_SCHEMA} TO PUBLIC;
COMMENT ON SCHEMA {CAPTURE_SCHEMA} IS 'WedSync Backup DDL capture v{VERSION}: not user data; remove with
python -m wedsync_backup.logical.ddl remove';

CREATE OR REPLACE FUNCTION {CAPTURE_SCHEMA}.fingerprint() RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog AS $fp$ {fingerprint_query(exclude_schemas)} $fp$;

CREATE OR REPLACE FUNCTION {CAPTURE_SCHEMA}.ddl_start() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pg_catalog.set_config('wedsync_backup.fp_before', {CAPTURE_SCHEMA}.fingerprint(), true);
EXCEPTION WHEN OTHERS THEN
  PERFORM pg_catalog.set_config('wedsync_backup.fp_before', '', true);
  {warn}
END $f$;

CREATE OR REPLACE FUNCTION {CAPTURE_SCHEMA}.ddl_drop() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE
  nothing boolean;
BEGIN
  SELECT coalesce(bool_and(d.is_temporary OR d.schema_name LIKE 'pg\\_temp%' OR d.schema_name = ANY({skip}::text[])
                           OR (d.object_type = 'schema' AND d.object_name = ANY({skip}::text[]))), false)
    INTO nothing FROM pg_catalog.pg_event_trigger_dropped_objects() d WHERE d.original;
  PERFORM pg_catalog.set_config('wedsync_backup.drop_skip', CASE WHEN nothing THEN 'on' ELSE '' END, true);
EXCEPTION WHEN OTHERS THEN
  {warn}
END $f$;

CREATE OR REPLACE FUNCTION {CAPTURE_SCHEMA}.ddl_end() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE
  ctx text;
  nested boolean;
  skip boolean;
  grp text;
  prev text;
  k integer;
  q text;
BEGIN
  GET DIAGNOSTICS ctx = PG_CONTEXT;
  nested := pg_catalog.strpos(ctx, E'\\n') > 0;  -- called from a function or DO block, not from the client
  IF tg_tag LIKE 'DROP%' THEN
    skip := coalesce(pg_catalog.current_setting('wedsync_backup.drop_skip', true), '') = 'on';
    PERFORM pg_catalog.set_config('wedsync_backup.drop_skip', '', true);
  ELSE
    SELECT coalesce(bool_and(c.in_extension OR coalesce(c.schema_name, CASE WHEN c.object_type = 'schema'
                                THEN c.object_identity END) LIKE 'pg\\_temp%'
                             OR coalesce(c.schema_name, CASE WHEN c.object_type = 'schema'
                                THEN c.object_identity END) = ANY({skip}::text[])), false)
      INTO skip FROM pg_catalog.pg_event_trigger_ddl_commands() c;
  END IF;
  IF NOT nested THEN
    -- one group per client query: its statements fire in order, k is this command's ordinal
    grp := pg_catalog.statement_timestamp()::text || ' ' || pg_catalog.pg_backend_pid()::text || ' '
           || pg_catalog.md5(pg_catalog.current_query());
    prev := coalesce(pg_catalog.current_setting('wedsync_backup.group', true), '');
    k := CASE WHEN pg_catalog.split_part(prev, '#', 1) = grp THEN pg_catalog.split_part(prev, '#', 2)::int + 1
              ELSE 0 END;
    PERFORM pg_catalog.set_config('wedsync_backup.group', grp || '#' || k::text, false);
    IF coalesce(pg_catalog.current_setting('wedsync_backup.sent', true), '') <> grp THEN
      q := pg_catalog.current_query();  -- the query text travels once per transaction
      PERFORM pg_catalog.set_config('wedsync_backup.sent', grp, true);
    END IF;
  END IF;
  PERFORM pg_catalog.pg_logical_emit_message(true, '{MESSAGE_PREFIX}', pg_catalog.json_build_object(
    'v', {VERSION}, 'tag', tg_tag, 'g', grp, 'k', k, 'q', q, 'nested', nested, 'skip', skip,
    'path', pg_catalog.to_json(pg_catalog.current_schemas(false)), 'user', current_user,
    'before', pg_catalog.current_setting('wedsync_backup.fp_before', true),
    'after', CASE WHEN skip THEN NULL ELSE {CAPTURE_SCHEMA}.fingerprint() END)::text);
  -- A fence: decoding orders a message by the LSN where it ends, which is where the next record starts; when
  -- that record belongs to another (sub)transaction the two would tie. The fence takes that place instead.
  PERFORM pg_catalog.pg_logical_emit_message(true, '{FENCE_PREFIX}', '');
EXCEPTION WHEN OTHERS THEN
  {warn}
END $f$;

DROP EVENT TRIGGER IF EXISTS {TRIGGERS[0]};
DROP EVENT TRIGGER IF EXISTS {TRIGGERS[1]};
DROP EVENT TRIGGER IF EXISTS {TRIGGERS[2]};
CREATE EVENT TRIGGER {TRIGGERS[0]} ON ddl_command_start EXECUTE FUNCTION {CAPTURE_SCHEMA}.ddl_start();
CREATE EVENT TRIGGER {TRIGGERS[1]} ON ddl_command_end EXECUTE FUNCTION {CAPTURE_SCHEMA}.ddl_end();
CREATE EVENT TRIGGER {TRIGGERS[2]} ON sql_drop EXECUTE FUNCTION {CAPTURE_SCHEMA}.ddl_drop();
"""


@dataclass(frozen=True)
class CaptureState:
    """Whether the source's schema changes travel in the change stream (recorded in the full's manifest)."""

    installed: bool
    version: int | None = None
    reason: str | None = None  # why not, when not installed
    exclude_schemas: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "installed": self.installed,
            "version": self.version,
            "reason": self.reason,
            "schema": CAPTURE_SCHEMA,
            "exclude_schemas": list(self.exclude_schemas),
        }


NOT_SUPERUSER = (
    "creating event triggers needs SUPERUSER (PostgreSQL 15); schema changes will end the incremental chain "
    "(everything before each change stays restorable and a full backup starts a new chain)"
)


def install_ddl_capture(source: PgTarget, exclude_schemas: tuple[str, ...] = ()) -> CaptureState:
    """Install (or refresh) the capture in one transaction; without the rights, say why and change nothing."""
    with source.connect(autocommit=False) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        if not superuser:
            conn.rollback()
            return CaptureState(False, reason=NOT_SUPERUSER, exclude_schemas=list(exclude_schemas))
        try:
            # our own DDL must not reach a running chain as a change to replay: event triggers are off in
            # replica mode (our schema is outside every fingerprint, so nothing looks uncaptured either)
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(_install_sql(exclude_schemas).encode())
            emit_marker(conn, "ddl capture installed")
            conn.commit()
        except psycopg.errors.InsufficientPrivilege as e:
            conn.rollback()
            return CaptureState(False, reason=f"{NOT_SUPERUSER}: {e}", exclude_schemas=list(exclude_schemas))
    return CaptureState(True, VERSION, exclude_schemas=list(exclude_schemas))


def emit_marker(conn: psycopg.Connection, what: str) -> None:
    """Mark the current transaction as ours in the change stream."""
    conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (MARKER_PREFIX, what))


def capture_state(source: PgTarget) -> CaptureState:
    """Installed means: all three event triggers exist, are enabled and call our functions."""
    with source.connect(autocommit=True) as conn:
        n = conn.execute(
            "SELECT count(*) FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid "
            "JOIN pg_namespace s ON s.oid = p.pronamespace "
            "WHERE e.evtname = ANY(%s) AND e.evtenabled <> 'D' AND s.nspname = %s",
            (list(TRIGGERS), CAPTURE_SCHEMA),
        ).fetchone()[0]
    if n == len(TRIGGERS):
        return CaptureState(True, VERSION)
    return CaptureState(False, reason="the DDL capture event triggers are not installed (or are disabled)")


def remove_ddl_capture(source: PgTarget) -> bool:
    """Drop our event triggers and schema; True when something was there. Schema changes then end chains."""
    with source.connect(autocommit=False) as conn:
        found = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (CAPTURE_SCHEMA,)).fetchone()[0]
        conn.execute("SET LOCAL session_replication_role = replica")
        for name in TRIGGERS:
            conn.execute(f"DROP EVENT TRIGGER IF EXISTS {name}")
        conn.execute(f"DROP SCHEMA IF EXISTS {CAPTURE_SCHEMA} CASCADE")
        emit_marker(conn, "ddl capture removed")
        conn.commit()
    return bool(found)


@dataclass
class DdlMessage:
    """One ``wedsync.ddl`` message as the source emitted it."""

    tag: str
    group: str | None
    ordinal: int | None
    query: str | None
    nested: bool
    skip: bool
    path: list[str]
    user: str
    before: str | None
    after: str | None

    @classmethod
    def parse(cls, content: str) -> DdlMessage:
        d = json.loads(content)
        return cls(
            tag=d["tag"],
            group=d.get("g"),
            ordinal=d.get("k"),
            query=d.get("q"),
            nested=bool(d.get("nested")),
            skip=bool(d.get("skip")),
            path=list(d.get("path") or []),
            user=d.get("user") or "",
            before=d.get("before") or None,
            after=d.get("after") or None,
        )


def message_content(line: str) -> tuple[str, str] | None:
    """(prefix, content) of a test_decoding message line, or None for any other line."""
    if not line.startswith("message: "):
        return None
    head, sep, content = line.partition(" content:")
    if not sep or " prefix: " not in head:
        return None
    prefix = head.split(" prefix: ", 1)[1].rsplit(", sz: ", 1)[0]
    return prefix, content


@dataclass
class Ddl:
    """A captured schema change to replay at its position: exactly this statement, as this role, on this path."""

    statement: str
    path: list[str]
    user: str
    tag: str

    def record(self) -> dict[str, Any]:
        return {"ddl": self.statement, "path": self.path, "user": self.user, "tag": self.tag}


def main(argv: list[str]) -> int:
    """``python -m wedsync_backup.logical.ddl remove|status '<libpq conninfo or URL>'``."""
    if len(argv) != 2 or argv[0] not in ("remove", "status"):
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        print("usage: python -m wedsync_backup.logical.ddl remove|status '<conninfo>'", file=sys.stderr)
        return 2
    target = target_from_conninfo(argv[1], "source")
    if argv[0] == "status":
        print(json.dumps(capture_state(target).as_dict()))
        return 0
    removed = remove_ddl_capture(target)
    if removed:
        print(f"Removed schema {CAPTURE_SCHEMA} and its event triggers: schema changes now end incremental chains")
    else:
        print(f"No DDL capture found (no schema {CAPTURE_SCHEMA}); event triggers dropped if any were left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
