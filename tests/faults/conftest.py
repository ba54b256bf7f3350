"""The fault matrix's shared set-up: one source database, three real targets and one committed backup.

The targets are built the way a task builds them (AIRFLOW_CONN_* variables, the provider hooks); the backup
goes through the core protocol (export, replicate, verify, commit) once, and rows that only read it share it.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from wedsync_backup.crypto import Keyring
from wedsync_backup.manifest import Manifest
from wedsync_backup.pg import PgTarget
from wedsync_backup.policy import Policy, load_policy
from wedsync_backup.storage.base import Storage

from devstack.postgres import Cluster
from devstack.services import GcsEmulator, MotoServer
from tests.faults.helpers import FAULT_SQL, full_backup
from tests.fixtures.storage import set_storage_env, unique_bucket

APP = "wedsync-faults"


@dataclass
class FaultWorld:
    cluster: Cluster
    source_db: str
    source: PgTarget
    policy: Policy
    targets: list[Storage]
    master_key: bytes
    ring: Keyring
    backup: Manifest
    base: Path

    def target(self, dbname: str, app: str = APP) -> PgTarget:
        return PgTarget(
            port=self.cluster.port,
            user=self.cluster.user,
            dbname=dbname,
            options={"application_name": app},
            label=dbname,
        )

    def new_db(self, prefix: str = "fault") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.cluster.create_database(name)
        return name


@pytest.fixture(scope="package")
def world(
    pg_cluster: Cluster, s3_server: MotoServer, gcs_server: GcsEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultWorld]:
    from wedsync_airflow.targets import build_targets

    base = tmp_path_factory.mktemp("faults")
    s3_bucket, gcs_bucket = unique_bucket("s3"), unique_bucket("gcs")
    s3_server.create_bucket(s3_bucket)
    gcs_server.create_bucket(gcs_bucket)
    mp = pytest.MonkeyPatch()
    set_storage_env(mp, s3_server, gcs_server, base / "primary", s3_bucket, gcs_bucket)
    source_db = f"faultsrc_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(source_db)
    pg_cluster.psql(dbname=source_db, input=FAULT_SQL)
    key = os.urandom(32)
    ring = Keyring(key, source="backup_encryption")
    policy = load_policy()
    targets = build_targets(policy)
    source = PgTarget(
        port=pg_cluster.port, user=pg_cluster.user, dbname=source_db, options={"application_name": APP}, label="src"
    )
    world = FaultWorld(
        pg_cluster, source_db, source, policy, targets, key, ring, full_backup(source, targets, ring), base
    )
    try:
        yield world
    finally:
        mp.undo()
        pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{source_db}" WITH (FORCE)')


def master_key_text(key: bytes) -> str:
    return base64.b64encode(key).decode()


def conn_json(**fields: object) -> str:
    return json.dumps(fields)
