"""Airflow connections -> core library objects (database targets, the keyring, the catalog)."""

from __future__ import annotations

from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError
from wedsync_backup.pg import PgTarget
from wedsync_backup.policy import Policy

from wedsync_airflow.targets import get_connection

PG_CONN_TYPES = ("postgres", "postgresql")


def pg_target(conn_id: str, role: str = "database") -> PgTarget:
    """A PostgreSQL connection (conn_type postgres; schema = database name; extra sslmode etc.)."""
    conn = get_connection(conn_id, role)
    if conn.conn_type not in PG_CONN_TYPES:
        raise ConfigError(
            f"Airflow connection '{conn_id}' ({role}) has type '{conn.conn_type}'",
            "it must be a PostgreSQL connection",
            "set its connection type to postgres",
        )
    if not conn.host:
        raise ConfigError(f"Airflow connection '{conn_id}' ({role}) has no host", fix="set its host")
    extra = conn.extra_dejson or {}
    options = {k: str(v) for k, v in extra.items() if k in ("sslmode", "sslrootcert", "application_name")}
    return PgTarget(
        host=conn.host,
        port=int(conn.port or 5432),
        user=conn.login or "postgres",
        password=conn.password or None,
        dbname=conn.schema or "postgres",
        options=options,
        label=conn_id,
    )


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
