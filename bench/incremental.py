"""The incremental tier's side of the benchmark: the change workload, a content checksum, and pgBackRest.

The workload is the issue's: 1% of the rows of every table updated, scattered over the table (picked by a
hash of the primary key, or of the whole row for a table without one), and 0.1% deleted, in a few
transactions. Deletes skip rows another table still references, so no ON DELETE action (cascade, set null)
adds changes the workload did not ask for.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from wedsync_backup.pg import PgTarget

UPDATE_PER_MILLE = 10  # 1%
DELETE_PER_MILLE = 1  # 0.1%


@dataclass
class TableInfo:
    oid: int
    ident: sql.Composed
    name: str
    key: list[str]
    columns: dict[str, str]  # updatable column (not generated, identity, constrained or indexed) -> type
    referenced_by: list[tuple[sql.Composed, list[str], list[str]]]  # (child table, child cols, our cols)


def _tables(conn: psycopg.Connection) -> list[TableInfo]:
    rows = conn.execute(
        """
        SELECT c.oid, n.nspname, c.relname,
          ARRAY(SELECT a.attname::text FROM pg_index i
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)),
          ARRAY(SELECT a.attname::text || ':' || format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                   AND a.attidentity <> 'a'
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND a.attnum = ANY(k.conkey))
                   AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND a.attnum = ANY(i.indkey))
                 ORDER BY a.attnum)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_%'
         ORDER BY 2, 3
        """
    ).fetchall()
    out = []
    for oid, schema, name, key, cols in rows:
        columns = dict(c.split(":", 1) for c in cols)
        out.append(TableInfo(oid, sql.Identifier(schema, name), f"{schema}.{name}", list(key), columns, []))
    by_oid = {t.oid: t for t in out}
    for child, parent, ccols, pcols in conn.execute(
        """
        SELECT con.conrelid, con.confrelid,
          ARRAY(SELECT attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
                  JOIN pg_attribute ON attrelid = con.conrelid AND attnum = k.n ORDER BY k.i),
          ARRAY(SELECT attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
                  JOIN pg_attribute ON attrelid = con.confrelid AND attnum = k.n ORDER BY k.i)
          FROM pg_constraint con WHERE con.contype = 'f'
        """
    ).fetchall():
        # a foreign key on a partitioned table is checked against each partition's rows: use its parent
        child_ident = sql.SQL("{}").format(sql.Identifier(*_qualname(conn, child)))
        for p in _leaves(conn, parent):
            if p in by_oid:
                by_oid[p].referenced_by.append((child_ident, list(ccols), list(pcols)))
    return out


def _qualname(conn: psycopg.Connection, oid: int) -> tuple[str, str]:
    return conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    ).fetchone()


def _leaves(conn: psycopg.Connection, oid: int) -> list[int]:
    """The partitions holding a table's rows: itself unless it is partitioned (then no rows of its own)."""
    rows = conn.execute("SELECT relid::oid FROM pg_partition_tree(%s::oid::regclass) WHERE isleaf", (oid,))
    return [r[0] for r in rows] or [oid]


def _pick(t: TableInfo, residue: sql.Composable) -> sql.Composed:
    """A scattered, deterministic 1-in-1000 sample: a hash of the key (or of the whole row) modulo 1000."""
    if t.key:
        hashed = sql.SQL("hashtext(ROW({})::text)").format(sql.SQL(", ").join(map(sql.Identifier, t.key)))
    else:
        hashed = sql.SQL("hashtext(x::text)")
    return sql.SQL("abs({} % 1000) {}").format(hashed, residue)


def _set_clause(t: TableInfo) -> sql.Composed | None:
    """What an application edit would touch: updated_at if the table has one, else a text column, else created_at."""
    if "updated_at" in t.columns:
        return sql.SQL("updated_at = clock_timestamp()")
    for col, typ in t.columns.items():
        if typ == "text" and col not in t.key:
            return sql.SQL("{c} = {c} || ' (edited)'").format(c=sql.Identifier(col))
    for col, typ in t.columns.items():
        if typ.startswith("timestamp") and col not in t.key:
            return sql.SQL("{c} = {c} + interval '1 second'").format(c=sql.Identifier(col))
    return None


@dataclass
class Workload:
    updated: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    rows_before: int = 0
    transactions: int = 0
    seconds: float = 0.0
    until: str = ""  # a moment after the last change committed (the PITR target time)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def apply_workload(target: PgTarget, groups: int = 3) -> Workload:
    """Update 1% and delete 0.1% of every table's rows: updates in ``groups`` transactions, deletes in one."""
    w = Workload()
    started = time.monotonic()
    with target.connect(autocommit=False) as conn:
        tables = _tables(conn)
        conn.commit()
        for t in tables:
            w.rows_before += conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(t.ident)).fetchone()[0]
        conn.commit()
        for g in range(groups):
            for t in tables[g::groups]:
                setter = _set_clause(t)
                if setter is None:
                    w.skipped.append(t.name)
                    continue
                stmt = sql.SQL("UPDATE ONLY {} AS x SET {} WHERE {}").format(
                    t.ident, setter, _pick(t, sql.SQL("< {}").format(sql.Literal(UPDATE_PER_MILLE)))
                )
                w.updated[t.name] = conn.execute(stmt).rowcount
            conn.commit()
            w.transactions += 1
        for t in tables:
            cond = _pick(t, sql.SQL("BETWEEN 500 AND {}").format(sql.Literal(500 + DELETE_PER_MILLE - 1)))
            for child, ccols, pcols in t.referenced_by:
                match = sql.SQL(" AND ").join(
                    sql.SQL("c.{} = x.{}").format(sql.Identifier(cc), sql.Identifier(pc))
                    for cc, pc in zip(ccols, pcols, strict=True)
                )
                cond = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM {} c WHERE {})").format(cond, child, match)
            stmt = sql.SQL("DELETE FROM ONLY {} AS x WHERE {}").format(t.ident, cond)
            w.deleted[t.name] = conn.execute(stmt).rowcount
        conn.commit()
        w.transactions += 1
    time.sleep(0.5)
    w.until = datetime.now(UTC).isoformat()
    w.seconds = time.monotonic() - started
    return w


def content_digest(target: PgTarget) -> dict[str, tuple[int, int]]:
    """Per table (count, sum of row hashes): equal on two databases means the same rows, in any order."""
    with target.connect(autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1")
        out = {}
        for t in _tables(conn):
            n, h = conn.execute(
                sql.SQL("SELECT count(*), coalesce(sum(hashtext(x::text)::bigint), 0) FROM ONLY {} x").format(t.ident)
            ).fetchone()
            out[t.name] = (int(n), int(h))
    return out


# --- pgBackRest --------------------------------------------------------------------------------------------


class PgBackRestUnavailable(RuntimeError):
    """pgBackRest is not installed or cannot back up the bench cluster (the reason is the message)."""


@dataclass
class BackRestRun:
    kind: str  # full / incr
    repo: int  # 1: file-level incremental (the default); 2: block incremental (repo-bundle + repo-block)
    seconds: float
    stored_bytes: int  # what this backup added to the repository (compressed)
    size_bytes: int  # the database files it covers, uncompressed
    delta_bytes: int  # the files it copied, uncompressed
    label: str


class PgBackRest:
    """A stanza for the bench cluster in a private config; pgBackRest runs as postgres (the cluster's owner)."""

    def __init__(self, work: Path, datadir: Path, port: int, socket_dir: Path) -> None:
        self.exe = shutil.which("pgbackrest")
        self.root = work / "pgbackrest"
        self.conf = self.root / "pgbackrest.conf"
        self.datadir, self.port, self.socket_dir = datadir, port, socket_dir
        self.stanza = "bench"

    def version(self) -> str:
        assert self.exe
        return subprocess.run([self.exe, "version"], capture_output=True, text=True).stdout.strip()

    def archive_command(self) -> str:
        return f"{self.exe} --config={self.conf} --stanza={self.stanza} archive-push %p"

    def configure(self) -> None:
        if not self.exe:
            raise PgBackRestUnavailable("pgbackrest is not installed (apt-get install pgbackrest)")
        for sub in ("repo", "repo-block", "log", "lock", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    "[global]",
                    f"repo1-path={self.root / 'repo'}",
                    "repo1-retention-full=2",
                    f"repo2-path={self.root / 'repo-block'}",
                    "repo2-retention-full=2",
                    "repo2-bundle=y",
                    "repo2-block=y",
                    "beta=y",  # block incremental is BETA in 2.45
                    f"log-path={self.root / 'log'}",
                    f"lock-path={self.root / 'lock'}",
                    f"spool-path={self.root / 'spool'}",
                    "log-level-console=warn",
                    "log-level-file=info",
                    "compress-type=zst",
                    "compress-level=3",
                    "process-max=2",
                    "start-fast=y",
                    "",
                    f"[{self.stanza}]",
                    f"pg1-path={self.datadir}",
                    f"pg1-port={self.port}",
                    f"pg1-socket-path={self.socket_dir}",
                    "pg1-user=postgres",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in [self.root, *self.root.rglob("*")]:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def run(self, *args: str) -> str:
        assert self.exe
        cmd = [self.exe, f"--config={self.conf}", f"--stanza={self.stanza}", *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise PgBackRestUnavailable(
                f"`pgbackrest {' '.join(args)}` failed (exit {res.returncode}): "
                + (res.stderr.strip() or res.stdout.strip())[-1500:]
            )
        return res.stdout

    def backup(self, kind: str, repo: int = 1) -> BackRestRun:
        started = time.monotonic()
        self.run(f"--repo={repo}", f"--type={kind}", "backup")
        seconds = time.monotonic() - started
        info = json.loads(self.run(f"--repo={repo}", "--output=json", "info"))[0]
        last = info["backup"][-1]
        return BackRestRun(
            kind=kind,
            repo=repo,
            seconds=seconds,
            stored_bytes=int(last["info"]["repository"]["delta"]),
            size_bytes=int(last["info"]["size"]),
            delta_bytes=int(last["info"]["delta"]),
            label=last["label"],
        )

    def archive_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "repo" / "archive").rglob("*") if p.is_file())
