"""Restore against a real PostgreSQL: exact round trip, and every refusal or failure leaves the target as it was."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import psycopg
import pytest
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import CryptoError, IntegrityError, RestoreError, WedSyncError
from wedsync_backup.export import ExportOptions, run_export
from wedsync_backup.manifest import Manifest, manifest_key
from wedsync_backup.policy import load_policy
from wedsync_backup.repository import read_manifest
from wedsync_backup.restore import (
    PutBack,
    interrupted_restore,
    plan_restore,
    put_back_interrupted,
    restore_backup,
    target_contents,
)
from wedsync_backup.storage.local import LocalStorage

from devstack.postgres import Cluster
from tests.faults.helpers import restore_killed_half_way
from tests.fixtures.airflow import schema_dump
from tests.wedsync_backup.test_export import (
    MARKER,
    db_state,
    flip_body_byte,
    local_store,
    pg_target,
    source_db,  # noqa: F401 - fixture
)

PROBE_ROLE = "wedsync_restore_probe"
MASTER_KEY = os.urandom(32)  # the backup's, also for the processes of its own a test starts (and kills)


@pytest.fixture(scope="module")
def backup(
    pg_cluster: Cluster,
    source_db: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Manifest, Path, Keyring]:
    """One backup of the source, committed on a local target; tests that damage it work on a copy."""
    root = tmp_path_factory.mktemp("restore") / "primary"
    ring = Keyring(MASTER_KEY)
    opts = ExportOptions(workers=2, priority_of=load_policy(env={}).priority_of)
    m = run_export(pg_target(pg_cluster, source_db), local_store(root), ring, backup_id="full-r", options=opts)
    local_store(root).put_bytes(manifest_key(m.backup_id), m.to_bytes())
    return m, root, ring


def copy_of(backup: tuple[Manifest, Path, Keyring], tmp_path: Path) -> LocalStorage:
    _, root, _ = backup
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return local_store(dst)


def dressed_target(cluster: Cluster, dbname: str) -> str:
    """Give the empty target's schema public a non-default grant, so a reset must put it back; return its dump."""
    cluster.psql(
        "-c",
        f"DO $$ BEGIN CREATE ROLE {PROBE_ROLE}; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    cluster.psql("-c", f"GRANT CREATE ON SCHEMA public TO {PROBE_ROLE}", dbname=dbname)
    dump = schema_dump(cluster, dbname)
    assert f"GRANT CREATE ON SCHEMA public TO {PROBE_ROLE}" in dump
    return dump


def test_round_trip_is_exact(
    backup: tuple[Manifest, Path, Keyring],
    pg_cluster: Cluster,
    source_db: str,  # noqa: F811
    empty_db: str,
) -> None:
    m, root, ring = backup
    target = pg_target(pg_cluster, empty_db, "restore_target")
    plan = plan_restore(m, local_store(root), ring, target)
    assert (plan.tables, plan.rows) == (len(m.tables), m.total_rows)
    result = restore_backup(m, local_store(root), ring, target, workers=3)
    assert result.rows == m.total_rows and result.tables == len(m.tables) == result.verified_tables
    assert schema_dump(pg_cluster, empty_db) == schema_dump(pg_cluster, source_db)
    rows, seqs = db_state(pg_cluster, empty_db)
    src_rows, src_seqs = db_state(pg_cluster, source_db)
    assert seqs == src_seqs
    assert rows.keys() == src_rows.keys()
    for name in rows:
        assert rows[name] == src_rows[name], name
    assert rows["public.users_per_tenant"], "the materialized view was not refreshed"
    assert any(MARKER in r for r in rows["public.users"])


def test_non_empty_target_is_refused_before_it_is_touched(
    backup: tuple[Manifest, Path, Keyring], pg_cluster: Cluster, empty_db: str
) -> None:
    m, root, ring = backup
    pg_cluster.psql("-c", "CREATE TABLE public.already_here (id int)", dbname=empty_db)
    before = schema_dump(pg_cluster, empty_db)
    with pytest.raises(RestoreError, match=r"not empty.*public\.already_here") as e:
        restore_backup(m, local_store(root), ring, pg_target(pg_cluster, empty_db, "restore_target"))
    assert "new empty database" in e.value.fix
    assert schema_dump(pg_cluster, empty_db) == before


@pytest.mark.parametrize("damaged", ["schema", "last data part"])
def test_tampered_object_fails_and_leaves_the_target_empty(
    backup: tuple[Manifest, Path, Keyring], pg_cluster: Cluster, empty_db: str, tmp_path: Path, damaged: str
) -> None:
    m, _, ring = backup
    store = copy_of(backup, tmp_path)
    obj = m.schema_object if damaged == "schema" else m.tables[-1].parts[-1]
    path = store.root / obj.key
    path.write_bytes(flip_body_byte(path.read_bytes()))
    before = dressed_target(pg_cluster, empty_db)
    target = pg_target(pg_cluster, empty_db, "restore_target")
    plan_restore(m, store, ring, target)  # sizes are intact: only reading the bytes finds the damage
    with pytest.raises(WedSyncError, match=obj.key):
        restore_backup(m, store, ring, target, workers=2)
    assert target_contents(target) == []
    assert schema_dump(pg_cluster, empty_db) == before


def test_wrong_keyring_is_refused_before_the_target_is_touched(
    backup: tuple[Manifest, Path, Keyring], pg_cluster: Cluster, empty_db: str
) -> None:
    m, root, _ = backup
    before = dressed_target(pg_cluster, empty_db)
    with pytest.raises(CryptoError, match="previous_keys"):
        restore_backup(m, local_store(root), Keyring(os.urandom(32)), pg_target(pg_cluster, empty_db))
    assert schema_dump(pg_cluster, empty_db) == before


def test_missing_object_is_found_by_the_plan(
    backup: tuple[Manifest, Path, Keyring], pg_cluster: Cluster, empty_db: str, tmp_path: Path
) -> None:
    m, _, ring = backup
    store = copy_of(backup, tmp_path)
    gone = m.tables[1].parts[0].key
    store.delete([gone])
    with pytest.raises(IntegrityError, match=rf"{gone}.*missing") as e:
        plan_restore(m, store, ring, pg_target(pg_cluster, empty_db))
    assert "another target" in e.value.fix
    assert target_contents(pg_target(pg_cluster, empty_db)) == []


def test_edited_manifest_fails_authentication(
    backup: tuple[Manifest, Path, Keyring], pg_cluster: Cluster, empty_db: str, tmp_path: Path
) -> None:
    m, _, ring = backup
    store = copy_of(backup, tmp_path)
    path = store.root / manifest_key(m.backup_id)
    doc = json.loads(path.read_text())
    doc["tables"][0]["row_count"] += 1
    path.write_text(json.dumps(doc, sort_keys=True, indent=1))
    edited = read_manifest(store, m.backup_id)
    assert edited.tables[0].row_count == m.tables[0].row_count + 1
    before = schema_dump(pg_cluster, empty_db)
    target = pg_target(pg_cluster, empty_db)
    with pytest.raises(IntegrityError, match="failed authentication"):
        plan_restore(edited, store, ring, target)
    with pytest.raises(IntegrityError, match="failed authentication"):
        restore_backup(edited, store, ring, target)
    assert schema_dump(pg_cluster, empty_db) == before


def table_rows(cluster: Cluster, dbname: str) -> dict[str, int]:
    """Each user table's row count (a half-loaded database's materialized views cannot be read)."""
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        names = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        return {n: conn.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for (n,) in names}


def test_put_back_undoes_only_this_backups_interrupted_restore(
    backup: tuple[Manifest, Path, Keyring], pg_cluster: Cluster, empty_db: str
) -> None:
    """A restore whose process is killed outright leaves its target half-loaded under its mark. Put back for that
    backup, the target is as it was (its own schema public included); put back for another backup, or with no
    mark there, the target is left exactly as it is."""
    m, root, _ = backup
    before = dressed_target(pg_cluster, empty_db)
    target = pg_target(pg_cluster, empty_db, "restore_target")
    restore_killed_half_way(MASTER_KEY, target, root, m.backup_id)
    assert (interrupted_restore(target) or {}).get("backup_id") == m.backup_id
    half = (schema_dump(pg_cluster, empty_db), table_rows(pg_cluster, empty_db))
    assert 0 < sum(half[1].values()) < m.total_rows, half[1]  # killed half-way

    other = put_back_interrupted(target, "full-20260101T000000Z-other")
    assert not other.put_back and f"its restore mark is of backup {m.backup_id}" in other.message
    assert (schema_dump(pg_cluster, empty_db), table_rows(pg_cluster, empty_db)) == half

    done = put_back_interrupted(target, m.backup_id)
    assert done == PutBack(
        True, f"put restore_target back as it was (empty): the restore of {m.backup_id} was interrupted"
    )
    assert interrupted_restore(target) is None and target_contents(target) == []
    assert schema_dump(pg_cluster, empty_db) == before

    pg_cluster.psql("-c", "CREATE TABLE public.not_a_restore (id int)", dbname=empty_db)
    unmarked = schema_dump(pg_cluster, empty_db)
    again = put_back_interrupted(target, m.backup_id)
    assert not again.put_back and "carries no restore mark" in again.message
    assert schema_dump(pg_cluster, empty_db) == unmarked


def test_a_restore_that_goes_on_replaying_keeps_its_mark_until_it_is_whole(
    backup: tuple[Manifest, Path, Keyring], pg_cluster: Cluster, empty_db: str
) -> None:
    """A point-in-time restore loads the full backup with ``keep_mark`` and replays its chain before unmarking:
    killed in the replay, the target is still known as an interrupted restore (the retry and put_back clear it)."""
    m, root, ring = backup
    target = pg_target(pg_cluster, empty_db, "restore_target")
    restore_backup(m, local_store(root), ring, target, keep_mark=True)
    assert (interrupted_restore(target) or {}).get("backup_id") == m.backup_id
    assert put_back_interrupted(target, m.backup_id).put_back and target_contents(target) == []
