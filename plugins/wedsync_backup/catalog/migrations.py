"""Numbered SQL migrations of the catalog, applied once each, in order, under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from wedsync_backup.catalog.connection import _connect
from wedsync_backup.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "include" / "sql" / "tracking"
# Serialises migrations of every process on one catalog ("WedSync" in ASCII).
MIGRATION_LOCK = 0x57656453796E63
MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The numbered ``NNNN_name.sql`` files of ``directory``, in order."""
    directory = Path(directory or MIGRATIONS_DIR)
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = MIGRATION_RE.match(path.name)
        if not m:
            raise ConfigError(
                f"Catalog migration file {path} is not named NNNN_name.sql",
                fix="rename it, e.g. 0002_add_column.sql (lowercase letters, digits and _)",
            )
        data = path.read_bytes()
        version = int(m.group(1))
        if version in found:
            raise ConfigError(
                f"Catalog migrations {found[version].path.name} and {path.name} share version {version}",
                fix="give each migration its own number",
            )
        found[version] = Migration(version, path.stem, path, data.decode(), hashlib.sha256(data).hexdigest())
    if not found:
        raise ConfigError(f"No catalog migrations found in {directory}", fix="check the deployment")
    return [found[v] for v in sorted(found)]


def _check_unchanged(m: Migration, applied: dict[str, Any]) -> None:
    if applied["checksum"] != m.checksum:
        raise ConfigError(
            f"Catalog migration {m.path.name} was edited after being applied "
            f"(applied {applied['applied_at']:%Y-%m-%d %H:%M} UTC as '{applied['name']}')",
            "its checksum no longer matches the one recorded in schema_migrations",
            f"restore the original {m.path.name} and put the change in a new, higher-numbered migration",
        )


def _all_applied(conn: psycopg.Connection[Any], migrations: list[Migration]) -> bool:
    """Every migration already applied, unchanged: then nothing needs the lock (one read, no transaction per
    migration: every task of every DAG starts with a migrate). An edited one is refused here too."""
    with conn.transaction():  # ended here: each migration below runs in a transaction of its own
        if conn.execute("SELECT to_regclass('schema_migrations') IS NULL AS missing").fetchone()["missing"]:
            return False
        applied = {
            r["version"]: r
            for r in conn.execute(
                "SELECT version, name, checksum, applied_at AT TIME ZONE 'UTC' AS applied_at FROM schema_migrations"
            ).fetchall()
        }
    for m in migrations:
        if m.version in applied:
            _check_unchanged(m, applied[m.version])
    return all(m.version in applied for m in migrations)


def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names newly applied.

    Every transaction takes the same advisory lock first, so tasks starting at once never double-apply.
    """
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    with _connect(dsn) as conn:
        if _all_applied(conn, migrations):
            return applied_now
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for m in migrations:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                row = conn.execute(
                    "SELECT name, checksum, applied_at AT TIME ZONE 'UTC' AS applied_at"
                    " FROM schema_migrations WHERE version = %s",
                    (m.version,),
                ).fetchone()
                if row:
                    _check_unchanged(m, row)
                    continue
                try:
                    conn.execute(m.sql.encode())
                except psycopg.Error as e:
                    raise ConfigError(
                        f"Catalog migration {m.path.name} failed and was rolled back",
                        str(e).strip(),
                        "fix the migration (it was never applied, so editing it is safe) and run again",
                    ) from e
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (m.version, m.name, m.checksum),
                )
                applied_now.append(m.name)
    return applied_now
