"""The restore side: find a backup's configurations, read them back, write what Airflow imports, and put
the configuration tables back into a database. No Airflow needed.

The files written hold secrets in plaintext (that is their purpose): they are created 0600 in a 0700
directory, or streamed to stdout; move them into Airflow and delete them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from wedsync_backup.commands.resources import Resources
from wedsync_backup.configurations.store import table_columns
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError, IntegrityError, StorageError
from wedsync_backup.manifest import ConfigTable, ConfigurationsSection, Manifest, StoredObject
from wedsync_backup.pg import PgTarget, qualified, quote_ident
from wedsync_backup.pipeline import decode_from_storage
from wedsync_backup.policy import Policy
from wedsync_backup.repository import committed_backup_ids, read_manifest
from wedsync_backup.restore import check_objects_present, verify_manifest_mac
from wedsync_backup.storage.base import Storage

log = logging.getLogger(__name__)
FILES = {"connections": "connections.json", "variables": "variables.json", "policy": "backup_policy.yaml"}
SECRET_WARNING = (
    "These files hold the connections' secrets in plaintext: import them "
    "(airflow connections import {connections}; airflow variables import {variables}), "
    "put the policy in place ({policy}), then delete them."
)


@dataclass
class Found:
    """A committed backup with a configurations component, authenticated, on one target."""

    manifest: Manifest
    storage: Storage
    keyring: Keyring

    @property
    def section(self) -> ConfigurationsSection:
        assert self.manifest.configurations is not None
        return self.manifest.configurations

    def read(self, obj: StoredObject) -> bytes:
        """One small object's verified plaintext (policy, connections, variables: a few KB)."""
        return b"".join(decode_from_storage(self.storage, obj, self.keyring, backup_id=self.manifest.backup_id))

    def summary(self) -> dict[str, Any]:
        """Names and counts only (what a dry run and XCom may show)."""
        s = self.section
        return {
            "backup_id": self.manifest.backup_id,
            "created_at": self.manifest.created_at,
            "from_target": self.storage.name,
            "connections": s.connection_ids,
            "variables": s.variable_keys,
            "tables": {t.qualified: t.row_count for t in s.tables},
            "tables_conn_id": s.tables_conn_id,
            "missing_at_backup": s.missing,
        }


def find_configurations(storage: Storage, keyring: Keyring, backup_id: str | None = None) -> Found:
    """``backup_id`` (None or "latest": the newest committed backup that has the component), authenticated and
    with every object of the component present."""
    if backup_id in (None, "", "latest"):
        for candidate in reversed(committed_backup_ids(storage)):
            try:
                manifest = read_manifest(storage, candidate)
            except IntegrityError:
                continue
            if manifest.configurations is not None:
                break
        else:
            raise StorageError(
                f"No backup on target {storage.name} ({storage.url()}) has a configurations component",
                "only full backups made since the component exists carry it",
                "run backup_daily_full, or point at another target",
            )
    else:
        manifest = read_manifest(storage, backup_id)
        if manifest.configurations is None:
            raise ConfigError(
                f"Backup {backup_id} has no configurations component",
                "it was made before the component existed, or is not a full backup",
                "pick a newer full backup, or use latest",
            )
    verify_manifest_mac(manifest, keyring)
    check_objects_present(replace(manifest, tables=[], schema={}, changes=None, extra={}), storage)
    return Found(manifest, storage, keyring)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: force it
        os.write(fd, data)
    finally:
        os.close(fd)


def write_files(found: Found, out_dir: Path) -> dict[str, str]:
    """connections.json, variables.json and backup_policy.yaml in ``out_dir`` (0700), each 0600."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out_dir, 0o700)
    s = found.section
    paths = {}
    for what, obj in (("connections", s.connections), ("variables", s.variables), ("policy", s.policy)):
        path = out_dir / FILES[what]
        _write_private(path, found.read(obj))
        paths[what] = str(path)
    return paths


def as_document(found: Found) -> dict[str, Any]:
    """The three in one JSON document (for stdout): the same content as the files."""
    s = found.section
    return {
        "backup_id": found.manifest.backup_id,
        "connections": json.loads(found.read(s.connections)),
        "variables": json.loads(found.read(s.variables)),
        "policy": found.read(s.policy).decode(),
    }


def check_tables(found: Found, target: PgTarget) -> list[ConfigTable]:
    """Every table exists in ``target`` with the backed-up columns: checked before anything is written."""
    tables = found.section.tables
    with target.connect(autocommit=True) as conn:
        for t in tables:
            have = table_columns(conn, t.schema, t.name, target.describe())
            missing = [c for c in t.columns if c not in have]
            if missing:
                raise ConfigError(
                    f"Configuration table {t.qualified} in {target.describe()} has no column(s) {', '.join(missing)}",
                    "it is older than the backed-up table",
                    "bring its schema up to date (for catalog tables: run any backup DAG's preflight), then retry",
                )
    return tables


def restore_tables(found: Found, target: PgTarget, *, dry_run: bool = True) -> dict[str, int]:
    """Replace each configuration table's rows in ``target`` with the backed-up ones, all in ONE transaction
    (a failure leaves every table as it was). A dry run only checks. Returns rows per table."""
    tables = check_tables(found, target)
    if dry_run:
        return {t.qualified: t.row_count for t in tables}
    loaded = {}
    with target.connect(autocommit=False) as conn, conn.transaction():
        for t in tables:
            conn.execute(f"DELETE FROM {qualified(t.schema, t.name)}")
            cols = ", ".join(quote_ident(c) for c in t.columns)
            with conn.cursor() as cur:
                with cur.copy(f"COPY {qualified(t.schema, t.name)} ({cols}) FROM STDIN") as copy:
                    for piece in decode_from_storage(
                        found.storage, t.object, found.keyring, backup_id=found.manifest.backup_id
                    ):
                        copy.write(piece)
                loaded[t.qualified] = cur.rowcount
    log.info("Restored configuration tables into %s: %s", target.describe(), loaded)
    return loaded


# --- the restore_configuration DAG's command (the adapter supplies what only Airflow can do) ------------------
CONFIRM = "RESTORE CONFIGURATION"


class Importer(Protocol):
    """What a running Airflow does with the restored connections and variables (never overwriting)."""

    def is_defined(self, kind: str, name: str) -> bool: ...

    def import_connections(self, connections_json: bytes) -> list[str]: ...

    def import_variables(self, variables: dict[str, Any]) -> list[str]: ...


@dataclass
class ConfigurationRestoreRequest:
    """The restore_configuration DAG's params."""

    backup_id: str | None = "latest"
    from_target: str = "primary"
    target_conn_id: str | None = None  # the database the configuration tables go to (None: not restored)
    policy_out: str | None = None  # where the policy file is written (None: not written)
    dry_run: bool = True
    confirm: str = ""

    def validate(self, policy: Policy) -> None:
        """One clear error before anything is read or touched."""
        policy.target(self.from_target)
        if not self.dry_run and (self.confirm or "").strip() != CONFIRM:
            raise ConfigError(
                "A configuration restore with dry_run=false needs the confirmation",
                f"confirm is {self.confirm!r}",
                f"set confirm to exactly: {CONFIRM}",
            )


def _found(res: Resources, req: ConfigurationRestoreRequest) -> Found:
    req.validate(res.policy)
    return find_configurations(res.storage(req.from_target), res.keyring(), req.backup_id)


def plan_configuration_restore(res: Resources, req: ConfigurationRestoreRequest, importer: Importer) -> dict[str, Any]:
    """What a restore would do (names and counts): every object present and authenticated, the tables
    checked against their target, and which connections and variables this Airflow already has (kept)."""
    found = _found(res, req)
    s = found.section
    plan = found.summary()
    plan["already_defined"] = [
        f"{kind} {name}"
        for kind, names in (("connection", s.connection_ids), ("variable", s.variable_keys))
        for name in names
        if importer.is_defined(kind, name)
    ]
    if req.target_conn_id and s.tables:
        db = res.open_database(req.target_conn_id, "configuration tables target")
        plan["tables_checked_in"] = db.describe()
        check_tables(found, db)
    plan["policy_out"] = req.policy_out
    plan["dry_run"] = req.dry_run
    return plan


def apply_configuration_restore(res: Resources, req: ConfigurationRestoreRequest, importer: Importer) -> dict[str, Any]:
    """Tables first (one transaction), then variables and connections this Airflow lacks, then the policy
    file. Re-running it is safe: what is already there is left as it is."""
    found = _found(res, req)
    s = found.section
    tables: dict[str, int] = {}
    if req.target_conn_id and s.tables:
        tables = restore_tables(
            found, res.open_database(req.target_conn_id, "configuration tables target"), dry_run=False
        )
    variables = importer.import_variables(json.loads(found.read(s.variables)))
    connections = importer.import_connections(found.read(s.connections))
    policy_path = None
    if req.policy_out:
        policy_path = Path(req.policy_out)
        policy_path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(policy_path, found.read(s.policy))
    return {
        "backup_id": found.manifest.backup_id,
        "connections_imported": connections,
        "variables_imported": variables,
        "tables_restored": tables,
        "policy_written": str(policy_path) if policy_path else None,
    }
