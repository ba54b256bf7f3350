"""Large objects: a full backup carries their contents and a restore brings them back exactly (OID, bytes,
comment); a failed restore leaves none behind."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import WedSyncError
from wedsync_backup.export import ExportOptions, run_export
from wedsync_backup.large_objects import large_objects_key
from wedsync_backup.restore import restore_backup, target_contents

from devstack.postgres import Cluster
from tests.wedsync_backup.test_export import flip_body_byte, local_store, pg_target

BIG = 2_500_000  # more than two 1 MiB slices


@pytest.fixture
def lo_source(pg_cluster: Cluster) -> Iterator[str]:
    name = f"lo_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    pg_cluster.psql(
        dbname=name,
        input=f"""
        CREATE TABLE contracts (id int PRIMARY KEY, scan oid);
        INSERT INTO contracts VALUES (1, lo_from_bytea(0, 'signed contract')),
                                     (2, lo_from_bytea(0, ''));
        SELECT lo_from_bytea(777001, decode(repeat(md5('x'), {BIG // 32}), 'hex')
                                     || decode(repeat('ab', {BIG - (BIG // 32) * 16}), 'hex'));
        COMMENT ON LARGE OBJECT 777001 IS 'the big one';
        """,
    )
    yield name
    pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def large_objects(cluster: Cluster, db: str) -> list[tuple[int, str, int, str | None]]:
    with psycopg.connect(cluster.dsn(db)) as conn:
        return conn.execute(
            "SELECT oid::bigint, md5(lo_get(oid)), length(lo_get(oid)), obj_description(oid, 'pg_largeobject') "
            "FROM pg_largeobject_metadata ORDER BY oid"
        ).fetchall()


def test_large_objects_round_trip_and_a_failed_restore_leaves_none(
    pg_cluster: Cluster, lo_source: str, tmp_path: Path
) -> None:
    store, ring = local_store(tmp_path / "primary"), Keyring(os.urandom(32))
    m = run_export(pg_target(pg_cluster, lo_source), store, ring, backup_id="full-lo", options=ExportOptions(workers=1))
    assert m.extra["large_objects"]["count"] == 3
    assert large_objects_key("full-lo") in [o.key for o in m.objects()]
    want = large_objects(pg_cluster, lo_source)
    assert [w[2] for w in want if w[0] == 777001] == [BIG]
    restored = f"r_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(restored)
    try:
        restore_backup(m, store, ring, pg_target(pg_cluster, restored, "restore_target"))
        assert large_objects(pg_cluster, restored) == want
        # a damaged large-object stream: the restore fails and takes every large object back out
        damaged = f"r_{uuid.uuid4().hex[:10]}"
        pg_cluster.create_database(damaged)
        key = large_objects_key("full-lo")
        store.put_bytes(key, flip_body_byte(store.get_bytes(key)))
        target = pg_target(pg_cluster, damaged, "restore_target")
        with pytest.raises(WedSyncError):
            restore_backup(m, store, ring, target)
        assert target_contents(target) == []
    finally:
        for db in (restored, locals().get("damaged")):
            if db:
                pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
