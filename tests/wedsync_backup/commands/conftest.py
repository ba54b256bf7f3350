"""A small world for the commands: a real source database (wal_level=logical), a real catalog database, the
policy's three targets over the wire (local dir, moto S3, GCS emulator) and a master key. No Airflow run:
the commands are called directly, with resources built the way the Airflow adapters build them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from wedsync_backup.catalog import Catalog
from wedsync_backup.commands.resources import Resources, RunRef
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError
from wedsync_backup.pg import PgTarget
from wedsync_backup.policy import Policy, TargetPolicy
from wedsync_backup.storage.base import Storage

from devstack.postgres import Cluster
from tests.fixtures.backups import copy_and_commit, full_backup
from tests.fixtures.storage import StorageTargets
from tests.wedsync_backup.test_incremental import drop_db

SOURCE_SQL = """
CREATE TABLE public.users (id serial PRIMARY KEY, email text NOT NULL, name text);
CREATE TABLE public.guests (id bigserial PRIMARY KEY, user_id int REFERENCES public.users (id), party int);
CREATE TABLE public.notes (note text);
INSERT INTO public.users (email, name) SELECT 'u' || g || '@example.com', 'User ' || g FROM generate_series(1, 50) g;
INSERT INTO public.guests (user_id, party) SELECT 1 + g % 50, g % 5 FROM generate_series(1, 120) g;
INSERT INTO public.notes VALUES ('a'), ('b');
"""


@dataclass
class World:
    cluster: Cluster
    source_db: str
    catalog_db: str
    policy: Policy
    storages: dict[str, Storage]
    ring: Keyring
    databases: dict[str, PgTarget] = field(default_factory=dict)
    runs: int = 0

    def db(self, name: str, label: str) -> PgTarget:
        return PgTarget(host="127.0.0.1", port=self.cluster.port, user=self.cluster.user, dbname=name, label=label)

    def open_database(self, conn_id: str, role: str) -> PgTarget:
        if conn_id == self.policy.source_conn_id:
            return self.db(self.source_db, conn_id)
        if conn_id not in self.databases:
            raise ConfigError(f"Airflow connection '{conn_id}' ({role}) is not defined", fix="define it")
        return self.databases[conn_id]

    def open_storage(self, target: TargetPolicy) -> Storage:
        return self.storages[target.name]

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.cluster.dsn(self.catalog_db))

    def resources(self, policy: Policy | None = None) -> Resources:
        return Resources(
            policy=policy or self.policy,
            open_storage=self.open_storage,
            open_catalog=lambda: self.catalog,
            open_database=self.open_database,
            open_keyring=lambda conn_id: self.ring,
        )

    def run(self, dag_id: str = "backup_daily_full") -> RunRef:
        self.runs += 1
        return RunRef(dag_id, f"manual__{uuid.uuid4().hex[:8]}", datetime.now(UTC), triggered_by="tester")

    def write(self, stmt: str, params: Any = None) -> None:
        """Commit synchronously, so logical decoding sees it at once (the test cluster runs async commits)."""
        dsn = self.cluster.dsn(self.source_db)
        with psycopg.connect(dsn, autocommit=True, options="-c synchronous_commit=on") as conn:
            conn.execute(stmt, params)

    def full_backup(self, res: Resources | None = None, *, reason: str | None = "test") -> str:
        return full_backup(res or self.resources(), self.run(), reason=reason)

    def copy_and_commit(self, res: Resources, backup_id: str, sha: str, tier: str = "full") -> str:
        return copy_and_commit(res, backup_id, sha, tier)


def new_world(pg_cluster: Cluster, schema_sql: str, policy: Policy, targets: Iterable[Storage]) -> Iterator[World]:
    """A source with ``schema_sql``, an empty catalog and ``targets``; every database dropped afterwards."""
    source_db, catalog_db = f"src_{uuid.uuid4().hex[:10]}", f"cat_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(source_db)
    pg_cluster.psql(dbname=source_db, input=schema_sql)
    pg_cluster.create_database(catalog_db)
    w = World(pg_cluster, source_db, catalog_db, policy, {s.name: s for s in targets}, Keyring(os.urandom(32)))
    try:
        yield w
    finally:
        drop_db(pg_cluster, source_db)
        for name in [catalog_db, *(t.dbname for t in w.databases.values())]:
            pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def world(pg_cluster: Cluster, storage_policy: Policy, storage_targets: StorageTargets) -> Iterator[World]:
    yield from new_world(pg_cluster, SOURCE_SQL, storage_policy, storage_targets)
