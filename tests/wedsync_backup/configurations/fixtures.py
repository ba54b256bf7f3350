"""One full backup with its configurations component, made once per module on real components: a source
and a catalog database, the policy's three targets over the wire (local dir, moto S3, GCS emulator)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from wedsync_backup.commands import backup
from wedsync_backup.configurations.bundle import ConfigurationBundle
from wedsync_backup.configurations.store import StoreResult, store_configurations
from wedsync_backup.crypto import Keyring
from wedsync_backup.policy import load_policy, policy_file_path

from devstack.postgres import Cluster
from tests.fixtures.storage import StorageTargets
from tests.wedsync_backup.commands.conftest import SOURCE_SQL, World
from tests.wedsync_backup.test_incremental import drop_db

SECRET = f"pw-{uuid.uuid4().hex}"  # the source connection's password: must never show up in plaintext
VAR_SECRET = f"var-{uuid.uuid4().hex}"
SETTINGS = [("w-1", "2026-12-24", 7, 15), ("w-2", "2027-06-01", 14, 30)]


def bundle() -> ConfigurationBundle:
    """What the Airflow adapter would gather: two connections (one with the secret) and a variable."""
    return ConfigurationBundle(
        policy_file_path().read_text(),
        {
            "wedsync_source": {
                "conn_type": "postgres",
                "host": "db.internal",
                "login": "wedsync",
                "password": SECRET,
                "schema": "wedsync",
                "port": 5432,
                "extra": '{"sslmode": "require"}',
            },
            "backup_primary": {"conn_type": "fs", "extra": '{"path": "/var/backups/wedsync"}'},
        },
        {"wedsync_alert_token": VAR_SECRET},
        ["connection drill_target"],
    )


@dataclass
class Backed:
    world: World
    backup_id: str
    export_sha: str
    stored: StoreResult
    retried: StoreResult
    master_key: bytes


@pytest.fixture(scope="module")
def backed(pg_cluster: Cluster, module_targets: StorageTargets) -> Iterator[Backed]:
    source_db, catalog_db = f"src_{uuid.uuid4().hex[:10]}", f"cat_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(source_db)
    pg_cluster.psql(dbname=source_db, input=SOURCE_SQL)
    pg_cluster.create_database(catalog_db)
    key = os.urandom(32)
    w = World(pg_cluster, source_db, catalog_db, load_policy(), {s.name: s for s in module_targets}, Keyring(key))
    w.databases["backup_catalog"] = w.db(catalog_db, "backup_catalog")
    try:
        res, run = w.resources(), w.run()
        begun = backup.begin(res, run, reason="configurations test")  # migrates the catalog
        with w.catalog.connect() as conn:
            for row in SETTINGS:
                conn.execute(
                    "INSERT INTO wedding_backup_settings (wedding_id, wedding_date, proximity_days, frequency_minutes)"
                    " VALUES (%s, %s, %s, %s)",
                    row,
                )
        exported = backup.export(res, begun.backup_id, run)
        stored = store_configurations(res, begun.backup_id, exported.manifest_sha256, bundle())
        retried = store_configurations(res, begun.backup_id, exported.manifest_sha256, bundle())  # a task retry
        w.copy_and_commit(res, begun.backup_id, retried.manifest_sha256)
        yield Backed(w, begun.backup_id, exported.manifest_sha256, stored, retried, key)
    finally:
        drop_db(pg_cluster, source_db)  # (its chain's replication slot too)
        pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{catalog_db}" WITH (FORCE)')
