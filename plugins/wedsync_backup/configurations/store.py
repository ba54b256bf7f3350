"""The backup side: store a ConfigurationBundle and the policy's configuration tables in a full backup.

Runs after the export, before replication: the objects are written to the primary beside the backup's
data, encrypted with the backup's own data key, and the pending manifest is sealed again with the new
``configurations`` section, so replicate, verify and commit treat them like every other object.
Idempotent: a retry finds the section already sealed (or the backup committed) and changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import psycopg
import yaml

from wedsync_backup.commands.resources import Resources
from wedsync_backup.configurations.bundle import ConfigurationBundle
from wedsync_backup.configurations.policy import configurations_policy
from wedsync_backup.crypto import DataKey
from wedsync_backup.errors import ConfigError, IntegrityError
from wedsync_backup.export import _copy_chunks
from wedsync_backup.manifest import ConfigTable, ConfigurationsSection, Manifest, backup_prefix, manifest_key
from wedsync_backup.pg import PgTarget, qualified, quote_ident
from wedsync_backup.pipeline import encode_to_storage
from wedsync_backup.repository import pending_manifest_bytes, seal_pending
from wedsync_backup.restore import verify_manifest_mac
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)


def configurations_prefix(backup_id: str) -> str:
    return f"{backup_prefix(backup_id)}configurations/"


@dataclass
class StoreResult:
    """What the task returns (names and counts only: never a value)."""

    backup_id: str
    manifest_sha256: str
    connections: list[str]
    variables: list[str]
    tables: dict[str, int]
    missing: list[str] = field(default_factory=list)
    already_stored: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result(manifest: Manifest, sha: str, *, already: bool) -> StoreResult:
    c = manifest.configurations
    assert c is not None
    tables = {t.qualified: t.row_count for t in c.tables}
    return StoreResult(manifest.backup_id, sha, c.connection_ids, c.variable_keys, tables, c.missing, already)


def _sealed_sha(manifest: Manifest, data_key: DataKey) -> str:
    """The sha256 of ``manifest`` as seal_pending would write it (the MAC is deterministic)."""
    manifest.mac = data_key.mac(manifest.body_bytes())
    return manifest.sha256()


def store_configurations(
    res: Resources, backup_id: str, manifest_sha256: str, bundle: ConfigurationBundle
) -> StoreResult:
    """Add the configurations component to the exported (pending) backup ``backup_id``; returns the new
    manifest checksum the later phases check against."""
    primary = res.primary()
    data = pending_manifest_bytes(primary, backup_id)
    sha = hashlib.sha256(data).hexdigest()
    manifest = Manifest.from_bytes(data, source=f"manifest of {backup_id} on primary")
    if primary.exists(manifest_key(backup_id)):  # committed: never touched again
        if manifest.configurations is None:
            log.warning("Backup %s was committed without the configurations component: left as it is", backup_id)
            return StoreResult(backup_id, sha, [], [], {}, already_stored=True)
        log.info("Backup %s is already committed with its configurations", backup_id)
        return _result(manifest, sha, already=True)
    keyring = res.keyring()
    verify_manifest_mac(manifest, keyring)
    data_key = keyring.unwrap(manifest.encryption["wrapped_key"], backup_id)
    if sha != manifest_sha256:
        if manifest.configurations is not None and _sealed_sha(replace(manifest, configurations=None), data_key) == (
            manifest_sha256
        ):
            log.info("The configurations of %s are already stored (a retry): nothing to do", backup_id)
            return _result(manifest, sha, already=True)
        raise IntegrityError(
            f"The manifest of {backup_id} on the primary target changed after the export",
            f"sha256 {sha} instead of {manifest_sha256}",
            "re-run the backup",
        )
    manifest.configurations = _write_objects(res, primary, backup_id, data_key, bundle)
    new_sha = seal_pending(primary, manifest, data_key)
    c = manifest.configurations
    log.info(
        "Stored the configurations of %s: policy, %d connections (%s), %d variables, tables %s",
        backup_id,
        len(c.connection_ids),
        ", ".join(c.connection_ids),
        len(c.variable_keys),
        {t.qualified: t.row_count for t in c.tables},
    )
    for name in c.missing:
        log.warning("!!! %s is named by the policy but not defined in Airflow: it is not in this backup", name)
    return _result(manifest, new_sha, already=False)


def _write_objects(
    res: Resources, storage: Storage, backup_id: str, data_key: DataKey, bundle: ConfigurationBundle
) -> ConfigurationsSection:
    prefix, level = configurations_prefix(backup_id), res.policy.zstd_level

    def put(name: str, payload: bytes) -> Any:
        return encode_to_storage([payload], storage, prefix + name, data_key, zstd_level=level).stored_object()

    conf = configurations_policy(yaml.safe_load(bundle.policy_text) or {})
    tables: list[ConfigTable] = []
    if conf.tables:
        if not conf.conn_id:
            raise ConfigError("configurations.tables is set but no database is named", fix="set configurations.conn_id")
        db = res.open_database(conf.conn_id, "configuration tables")
        tables = dump_tables(db, conf.tables, storage, prefix, data_key, level)
    return ConfigurationsSection(
        policy=put("policy.yaml.wsb", bundle.policy_text.encode()),
        connections=put("connections.json.wsb", bundle.connections_json()),
        variables=put("variables.json.wsb", bundle.variables_json()),
        connection_ids=sorted(bundle.connections),
        variable_keys=sorted(bundle.variables),
        tables=tables,
        tables_conn_id=conf.conn_id if conf.tables else None,
        missing=list(bundle.missing),
    )


def table_columns(conn: psycopg.Connection, schema: str, name: str, where: str) -> list[str]:
    """The table's columns in order; a ConfigError naming the table when it does not exist."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
        (schema, name),
    ).fetchall()
    if not rows:
        raise ConfigError(
            f"Configuration table {schema}.{name} does not exist in {where}",
            fix="create it there, or remove it from configurations.tables in the policy",
        )
    return [r[0] for r in rows]


def dump_tables(
    db: PgTarget, names: tuple[str, ...], storage: Storage, prefix: str, data_key: DataKey, level: int
) -> list[ConfigTable]:
    """Every named table's rows as COPY text, streamed, all read in one snapshot."""
    out = []
    with db.connect(autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for full in names:
            schema, name = full.split(".", 1)
            cols = table_columns(conn, schema, name, db.describe())
            sql = f"COPY {qualified(schema, name)} ({', '.join(quote_ident(c) for c in cols)}) TO STDOUT"
            key = f"{prefix}tables/{schema}.{name}.wsb"
            r = encode_to_storage(_copy_chunks(conn, sql), storage, key, data_key, zstd_level=level)
            out.append(ConfigTable(schema, name, cols, r.newlines, r.stored_object()))
    return out
