"""Airflow connections -> core library objects (database targets, the keyring, the catalog)."""

from __future__ import annotations

from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError
from wedsync_backup.pg import LIBPQ_KEYWORDS, PgTarget
from wedsync_backup.policy import Policy

from wedsync_airflow.targets import get_connection

PG_CONN_TYPES = ("postgres", "postgresql")


def pg_target(conn_id: str, role: str = "database") -> PgTarget:
    """A PostgreSQL connection, read as the postgres provider's hook reads it.

    The host, port, login, password and schema (the database name) are the connection's fields; every extra
    is a libpq keyword (sslmode, sslrootcert, sslcert, sslkey, options, keepalives, connect_timeout...), as
    PostgresHook passes them on. psycopg and the client tools (pg_dump, pg_restore, psql) then all get the
    same parameters.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = get_connection(conn_id, role)
    if conn.conn_type not in PG_CONN_TYPES:
        raise ConfigError(
            f"Airflow connection '{conn_id}' ({role}) has type '{conn.conn_type}'",
            "it must be a PostgreSQL connection",
            "set its connection type to postgres",
        )
    if not conn.host:
        raise ConfigError(f"Airflow connection '{conn_id}' ({role}) has no host", fix="set its host")
    hook = PostgresHook(postgres_conn_id=conn_id)
    extra = dict(conn.extra_dejson or {})
    login, password, port = conn.login, conn.password, conn.port
    if extra.get("iam"):
        login, password, port = hook.get_iam_token(conn)
    options = {k: v for k, v in extra.items() if k not in hook.ignored_extra_options}
    unknown = sorted(k for k in options if k not in LIBPQ_KEYWORDS)
    if unknown:
        raise ConfigError(
            f"Airflow connection '{conn_id}' ({role}) has extra field(s) {', '.join(unknown)}",
            "they are not PostgreSQL (libpq) connection parameters",
            "remove them, or spell them as libpq does (sslmode, sslrootcert, sslcert, sslkey, options, "
            "keepalives, connect_timeout...)",
        )
    return PgTarget(
        host=conn.host,
        port=int(port or 5432),
        user=login or "postgres",
        password=password or None,
        dbname=conn.schema or "postgres",
        options={k: _libpq_value(v) for k, v in options.items()},
        label=conn_id,
    )


def _libpq_value(value: object) -> str:
    """JSON extras -> libpq text: true/false as 1/0 (keepalives), everything else as written."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def keyring(conn_id: str) -> Keyring:
    """Master keys from connection ``conn_id``: password = active key, extra previous_keys = older ones."""
    conn = get_connection(conn_id, "encryption")
    if not conn.password:
        raise ConfigError(
            f"Airflow connection '{conn_id}' has no password",
            "its password must be the master key: base64 of 32 random bytes",
            'generate one with: python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"',
        )
    previous = (conn.extra_dejson or {}).get("previous_keys") or []
    if isinstance(previous, str):
        previous = [previous]
    return Keyring.from_secrets(conn.password, previous, source=conn_id)


def catalog(policy: Policy) -> Catalog:
    return Catalog(pg_target(policy.catalog_conn_id, "catalog").conninfo())
