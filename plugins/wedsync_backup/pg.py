"""PostgreSQL connection parameters and client tools, shared by export, restore and the catalog.

Secrets never go on a command line: subprocesses get the password through PGPASSWORD.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from wedsync_backup.errors import ConfigError

BINDIR_ENV = "WEDSYNC_PG_BINDIR"


@dataclass(frozen=True)
class PgTarget:
    """Where a database is; ``label`` (usually the Airflow connection id) is what errors name."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    dbname: str = "postgres"
    options: dict[str, str] = field(default_factory=dict)
    label: str = "database"

    def conninfo(self) -> str:
        kw = {"host": self.host, "port": self.port, "user": self.user, "dbname": self.dbname, **self.options}
        if self.password:
            kw["password"] = self.password
        return make_conninfo(**kw)

    def env(self) -> dict[str, str]:
        """Environment for libpq command-line tools (pg_dump, pg_restore, psql)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGDATABASE=self.dbname)
        if self.password:
            env["PGPASSWORD"] = self.password
        if "sslmode" in self.options:
            env["PGSSLMODE"] = self.options["sslmode"]
        return env

    def with_db(self, dbname: str) -> PgTarget:
        return PgTarget(self.host, self.port, self.user, self.password, dbname, dict(self.options), self.label)

    def connect(self, **kwargs: object) -> psycopg.Connection:
        try:
            return psycopg.connect(self.conninfo(), connect_timeout=10, **kwargs)  # type: ignore[arg-type]
        except psycopg.OperationalError as e:
            raise ConfigError(
                f"Cannot connect to {self.label} ({self.user}@{self.host}:{self.port}/{self.dbname})",
                str(e).strip().splitlines()[0] if str(e).strip() else "connection refused",
                f"check the host, port, database, user and password of connection {self.label}, "
                "and that the server is running",
            ) from e


def _major(binary: Path) -> int:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1].split(".")[0])


def find_tool(name: str, min_major: int = 0) -> Path:
    """The newest ``pg_dump``/``pg_restore``/``psql`` whose major version is at least the server's."""
    candidates: list[Path] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(Path(os.environ[BINDIR_ENV]) / name)
    candidates += [Path(d) / name for d in glob.glob("/usr/lib/postgresql/*/bin")]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path).resolve())
    found = []
    for c in candidates:
        if c.exists():
            try:
                found.append((_major(c), c))
            except (subprocess.CalledProcessError, ValueError, IndexError):
                continue
    usable = [f for f in found if f[0] >= min_major]
    if not usable:
        have = ", ".join(f"{p} ({m})" for m, p in found) or "none"
        raise ConfigError(
            f"No {name} of PostgreSQL {min_major} or newer was found",
            f"found: {have}",
            f"install the PostgreSQL {min_major}+ client tools (e.g. apt-get install postgresql-client) "
            f"or set {BINDIR_ENV} to their directory",
        )
    return max(usable)[1]


def server_major(conn: psycopg.Connection) -> int:
    return conn.info.server_version // 10000


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"
