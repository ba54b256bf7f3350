"""The tracking catalog against a real PostgreSQL: migrations, constraints, idempotent repository calls."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from wedsync_backup.catalog import MIGRATIONS_DIR, Catalog, load_migrations, migrate
from wedsync_backup.errors import ConfigError, IntegrityError
from wedsync_backup.manifest import Manifest, StoredObject, TableEntry, content_checksum

T0 = datetime(2025, 6, 1, 2, 0, tzinfo=UTC)


def obj(key: str, plain: int, stored: int) -> StoredObject:
    return StoredObject(key, stored, "b" * 64, plain, "a" * 64)


def table(name: str, priority: str, rows: int, parts: list[StoredObject]) -> TableEntry:
    return TableEntry("public", name, priority, ["id"], rows, parts, content_checksum(parts))


def make_manifest(backup_id: str, *, parent: str | None = None, at: datetime = T0, lsn: str = "0/16B3748") -> Manifest:
    btype = "incremental" if parent else "full"
    return Manifest(
        backup_id=backup_id,
        backup_type=btype,
        created_at=at.isoformat(),
        source={"server_version": "15.8", "database": "wedsync", "system_identifier": "7"},
        consistent_point={
            "snapshot": "00000003-1",
            "lsn": lsn,
            "txid_snapshot": "750:750:",
            "time": at.isoformat(),
        },
        encryption={"algorithm": "AES-256-GCM", "key_id": "k2025", "wrapped_key": "x", "chunk_size": 65536},
        compression={"algorithm": "zstd", "level": 3},
        schema={
            "object": obj(f"backups/{backup_id}/schema.sql.zst.enc", 1000, 400).__dict__,
            "format": "plain",
        },
        tables=[
            table(
                "users",
                "critical",
                10,
                [obj(f"backups/{backup_id}/t1.0", 3000, 1200), obj(f"backups/{backup_id}/t1.1", 2000, 800)],
            ),
            table("forms", "high", 5, [obj(f"backups/{backup_id}/t2.0", 3000, 1000)]),
        ],
        parent_backup_id=parent,
        extra={"dag_id": "wedsync_full_backup", "run_id": f"run-{backup_id}"},
    )


SITES = {
    "primary": ("local", "disk", "dc-primary"),
    "secondary": ("s3", "object-storage", "aws"),
    "offsite": ("gcs", "object-storage", "gcp"),
}


def make_replicas(m: Manifest, sha: str, *, unverified: str | None = None) -> list[dict[str, Any]]:
    out = []
    for name, (kind, medium, site) in SITES.items():
        ok = name != unverified
        out.append(
            {
                "target_name": name,
                "kind": kind,
                "medium": medium,
                "site": site,
                "location": f"{kind}://bucket/backups/{m.backup_id}/",
                "stored_bytes": m.stored_bytes + 900,
                "object_count": len(m.objects()) + 1,
                "manifest_sha256": sha,
                "verified": ok,
                "verified_at": T0 + timedelta(minutes=5) if ok else None,
            }
        )
    return out


@pytest.fixture
def dsn(pg_cluster: Any, empty_db: str) -> str:
    return pg_cluster.dsn(empty_db)


@pytest.fixture
def cat(dsn: str) -> Catalog:
    c = Catalog(dsn)
    c.migrate()
    return c


def start(cat: Catalog, backup_id: str, btype: str = "full", **kw: Any) -> bool:
    return cat.start_backup(
        backup_id=backup_id,
        backup_type=btype,
        created_by="scheduler",
        rule_321={"compliant": True},
        warnings=[],
        retention_until=T0 + timedelta(days=30),
        **kw,
    )


def complete(cat: Catalog, m: Manifest, **kw: Any) -> bool:
    sha = m.sha256()
    return cat.complete_backup(m, sha, make_replicas(m, sha), T0 + timedelta(days=30), **kw)


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]


# --- migrations --------------------------------------------------------------------------------------------
def test_migrate_is_idempotent(dsn: str) -> None:
    names = [m.name for m in load_migrations()]
    assert migrate(dsn) == names
    assert migrate(dsn) == []
    assert count(dsn, "schema_migrations") == len(names)


def test_concurrent_migrations_apply_once(dsn: str) -> None:
    barrier = threading.Barrier(4)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(dsn))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # every migration applied exactly once (by whichever caller reached it first)
    assert sorted(name for r in results for name in r) == sorted(m.name for m in load_migrations())


def test_edited_migration_is_refused(dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "tracking"
    shutil.copytree(MIGRATIONS_DIR, d)
    migrate(dsn, d)
    (d / "9002_more.sql").write_text("ALTER TABLE backup_operations ADD COLUMN note text;\n")
    assert migrate(dsn, d) == ["9002_more"]
    (d / "9002_more.sql").write_text("ALTER TABLE backup_operations ADD COLUMN note2 text;\n")
    with pytest.raises(ConfigError, match=r"9002_more\.sql was edited after being applied"):
        migrate(dsn, d)


def test_failed_migration_rolls_back(dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "tracking"
    shutil.copytree(MIGRATIONS_DIR, d)
    (d / "9002_bad.sql").write_text("CREATE TABLE half_done (x int);\nSELECT no_such_function();\n")
    with pytest.raises(ConfigError, match=r"9002_bad\.sql failed"):
        migrate(dsn, d)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
        newest = max(m.version for m in load_migrations())  # the real ones applied, not the bad one
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (newest,)


# --- backups ---------------------------------------------------------------------------------------------
def test_backup_lifecycle_and_repeats(cat: Catalog, dsn: str) -> None:
    assert start(cat, "full-1", dag_id="d", run_id="r") is True
    assert start(cat, "full-1", dag_id="d", run_id="r") is True  # retry while running
    m = make_manifest("full-1")
    assert complete(cat, m) is True
    assert complete(cat, m) is False  # retry of the completing task
    assert start(cat, "full-1") is False  # duplicate trigger never downgrades it
    assert cat.fail_backup("full-1", "late failure") is False

    b = cat.get_backup("full-1")
    assert b is not None
    assert b["status"] == "completed" and b["integrity_verified"] is True
    assert b["size_bytes"] == 9000 and b["compressed_size_bytes"] == 3400 and b["total_rows"] == 15
    assert b["tables_included"] == ["public.users", "public.forms"]
    assert b["primary_location"].startswith("local://") and b["offsite_location"].startswith("gcs://")
    assert b["checksum"] == m.sha256() and b["key_id"] == "k2025" and b["format_version"] == 1
    assert str(b["consistent_lsn"]) == "0/16B3748" and b["snapshot_time"] == T0
    assert b["dag_id"] == "d" and b["run_id"] == "r" and b["rule_321"] == {"compliant": True}
    assert [r["target_name"] for r in b["replicas"]] == ["offsite", "primary", "secondary"]
    rp = b["recovery_point"]
    assert rp["chain"] == ["full-1"] and rp["point_type"] == "full" and rp["transaction_id"] == "750:750:"
    for table, n in [("backup_replicas", 3), ("backup_table_stats", 2), ("recovery_points", 1)]:
        assert count(dsn, table) == n
    actions = [a["action"] for a in cat.audit_entries("full-1")]
    assert actions == ["backup_started", "backup_completed"]


def test_complete_refuses_unverified_replica(cat: Catalog, dsn: str) -> None:
    start(cat, "full-2")
    m = make_manifest("full-2")
    sha = m.sha256()
    with pytest.raises(IntegrityError, match="replica 'offsite' is not verified"):
        cat.complete_backup(m, sha, make_replicas(m, sha, unverified="offsite"), None)
    missing = [r for r in make_replicas(m, sha) if r["target_name"] != "secondary"]
    with pytest.raises(IntegrityError, match="no copy on secondary"):
        cat.complete_backup(m, sha, missing, None)
    wrong = make_replicas(m, "c" * 64)
    with pytest.raises(IntegrityError, match="holds manifest"):
        cat.complete_backup(m, sha, wrong, None)
    b = cat.get_backup("full-2")
    assert b is not None and b["status"] == "in_progress" and b["replicas"] == []
    assert b["recovery_point"] is None
    assert count(dsn, "backup_table_stats") == 0
    assert cat.list_completed() == []


def test_completed_implies_verified_in_the_database(cat: Catalog, dsn: str) -> None:
    complete(cat, make_manifest("full-3"))
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE backup_operations SET integrity_verified = false WHERE backup_id = 'full-3'")
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO backup_operations"
            " (backup_id, backup_type, status, created_by, checksum, completed_at)"
            " VALUES ('x', 'full', 'completed', 'me', repeat('a', 64), now())"
        )
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.CheckViolation, match="cannot change"):
        conn.execute("UPDATE backup_operations SET status = 'failed' WHERE backup_id = 'full-3'")


def test_fail_then_retry_then_complete(cat: Catalog) -> None:
    start(cat, "full-4")
    assert cat.fail_backup("full-4", "disk full") is True
    assert cat.fail_backup("full-4", "disk full") is False
    b = cat.get_backup("full-4")
    assert b is not None and b["status"] == "failed" and b["error"] == "disk full"
    assert start(cat, "full-4") is True
    assert complete(cat, make_manifest("full-4")) is True
    b = cat.get_backup("full-4")
    assert b is not None and b["status"] == "completed" and b["error"] is None
    assert [a["action"] for a in cat.audit_entries("full-4")] == [
        "backup_started",
        "backup_failed",
        "backup_completed",
    ]


def test_conflicting_manifest_for_completed_backup(cat: Catalog) -> None:
    complete(cat, make_manifest("full-5"))
    other = make_manifest("full-5", lsn="0/2000000")
    with pytest.raises(IntegrityError, match="already completed"):
        complete(cat, other)


def test_incremental_chain_listing_and_retention(cat: Catalog) -> None:
    complete(cat, make_manifest("full-a", at=T0))
    complete(cat, make_manifest("inc-b", parent="full-a", at=T0 + timedelta(hours=1)))
    complete(cat, make_manifest("inc-c", parent="inc-b", at=T0 + timedelta(hours=2)))
    rp = cat.get_backup("inc-c")["recovery_point"]  # type: ignore[index]
    assert rp["chain"] == ["full-a", "inc-b", "inc-c"] and rp["point_type"] == "incremental"
    with pytest.raises(IntegrityError, match="depends on nope"):
        complete(cat, make_manifest("inc-x", parent="nope"))

    assert [b["backup_id"] for b in cat.list_completed()] == ["inc-c", "inc-b", "full-a"]
    assert cat.delete_backup_rows("inc-c") is True
    assert cat.delete_backup_rows("inc-c") is False
    b = cat.get_backup("inc-c")
    assert b is not None and b["pruned_at"] is not None and b["replicas"] == [] and b["recovery_point"] is None
    assert [b["backup_id"] for b in cat.list_completed()] == ["inc-b", "full-a"]


def test_start_backup_validates(cat: Catalog) -> None:
    with pytest.raises(ConfigError, match="Unknown backup type"):
        start(cat, "b1", btype="weekly")
    start(cat, "b2", btype="manual")
    with pytest.raises(ConfigError, match="already recorded as a manual"):
        start(cat, "b2", btype="full")
    with pytest.raises(ConfigError, match="no time zone"):
        cat.start_backup(
            backup_id="b3",
            backup_type="full",
            created_by="x",
            rule_321={},
            warnings=[],
            retention_until=datetime(2025, 1, 1),
        )


# --- audit, events, tests, weddings ----------------------------------------------------------------------
def test_audit_log_is_append_only(cat: Catalog, dsn: str) -> None:
    assert cat.audit("restore_requested", actor="alice", details={"why": "drill"}, key="k1") is True
    assert cat.audit("restore_requested", actor="alice", key="k1") is False
    assert cat.audit("note", actor="bob") is True
    assert len(cat.audit_entries()) == 2
    for stmt in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with (
            psycopg.connect(dsn) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
        ):
            conn.execute(stmt)
    assert len(cat.audit_entries()) == 2


def test_recovery_event_upsert(cat: Catalog) -> None:
    args: dict[str, Any] = dict(
        event_type="emergency_restore",
        dag_id="wedsync_emergency_restore",
        run_id="manual__1",
        mode="full",
        scope="all",
        from_target="primary",
        target_conn_id="wedsync_restore",
        dry_run=False,
        reason="ransomware",
        triggered_by="alice",
        backup_id="full-1",
    )
    eid = cat.start_recovery_event(**args, plan={"steps": 3})
    assert cat.start_recovery_event(**args) == eid  # retried task: same row, plan kept
    ev = cat.get_recovery_event(eid)
    assert ev is not None and ev["status"] == "in_progress" and ev["plan"] == {"steps": 3}
    cat.finish_recovery_event(eid, status="completed", result={"rows": 15}, data_loss_minutes=12.5)
    ev = cat.get_recovery_event(eid)
    assert ev is not None and ev["status"] == "completed" and float(ev["data_loss_minutes"]) == 12.5
    assert ev["completed_at"] is not None
    assert cat.start_recovery_event(**args) == eid  # a completed event is left as it is
    assert cat.get_recovery_event(eid)["status"] == "completed"  # type: ignore[index]

    dry = cat.start_recovery_event(**{**args, "run_id": "manual__2", "dry_run": True})
    assert dry != eid and cat.get_recovery_event(dry)["status"] == "planned"  # type: ignore[index]
    no_run = {**args, "run_id": None}
    assert cat.start_recovery_event(**no_run) != cat.start_recovery_event(**no_run)
    with pytest.raises(ConfigError, match="Unknown recovery event status"):
        cat.finish_recovery_event(eid, status="done")
    with pytest.raises(ConfigError, match="does not exist"):
        cat.finish_recovery_event(999_999, status="failed")


def test_record_backup_test(cat: Catalog) -> None:
    complete(cat, make_manifest("full-t"))
    kw: dict[str, Any] = dict(backup_id="full-t", test_type="restore_drill", dag_id="drill", run_id="r1")
    t1 = cat.record_backup_test(**kw, status="failed", error="timeout", tested_at=T0)
    t2 = cat.record_backup_test(**kw, status="passed", rows_checked=15, tested_at=T0 + timedelta(hours=1))
    assert t1 == t2
    tests = cat.backup_tests("full-t")
    assert len(tests) == 1 and tests[0]["status"] == "passed" and tests[0]["error"] is None
    assert cat.get_backup("full-t")["last_tested"] == T0 + timedelta(hours=1)  # type: ignore[index]
    cat.record_backup_test(backup_id="full-t", test_type="verify", target_name="offsite", status="passed", tested_at=T0)
    assert len(cat.backup_tests("full-t")) == 2
    assert cat.get_backup("full-t")["last_tested"] == T0 + timedelta(hours=1)  # type: ignore[index]
    with pytest.raises(ConfigError, match="not in the catalog"):
        cat.record_backup_test(backup_id="ghost", test_type="verify", status="passed")


def test_wedding_settings(cat: Catalog) -> None:
    cat.upsert_wedding_settings("w1", wedding_date=date(2025, 6, 7), organization_id="org")
    cat.upsert_wedding_settings("w2", wedding_date=date(2025, 6, 30))
    cat.upsert_wedding_settings("w3", wedding_date=date(2025, 6, 3), enabled=False)
    cat.upsert_wedding_settings("w2", wedding_date=date(2025, 6, 5), frequency_minutes=30)
    assert [w["wedding_id"] for w in cat.weddings_due(date(2025, 6, 1))] == ["w2", "w1"]
    assert cat.weddings_due(date(2025, 6, 8)) == []


# --- rebuild ---------------------------------------------------------------------------------------------
def test_rebuild_from_manifests(pg_cluster: Any, cat: Catalog, empty_db: str) -> None:
    full = make_manifest("full-r", at=T0)
    inc = make_manifest("inc-r", parent="full-r", at=T0 + timedelta(hours=6))
    orphan = make_manifest("inc-o", parent="gone", at=T0 + timedelta(hours=7))
    half = make_manifest("full-h", at=T0 + timedelta(hours=8))
    found = [
        (inc, inc.sha256(), make_replicas(inc, inc.sha256())),  # out of order on purpose
        (full, full.sha256(), make_replicas(full, full.sha256())),
        (orphan, orphan.sha256(), make_replicas(orphan, orphan.sha256())),
        (half, half.sha256(), make_replicas(half, half.sha256(), unverified="secondary")),
    ]
    fresh_db = f"{empty_db}_rb"
    pg_cluster.create_database(fresh_db)
    try:
        fresh = Catalog(pg_cluster.dsn(fresh_db))
        fresh.migrate()
        res = fresh.rebuild_from_manifests(found, retention_days={"full": 30, "incremental": 7})
        assert res.rebuilt == ["full-r", "inc-r"]
        assert set(res.skipped) == {"inc-o", "full-h"}
        assert "depends on gone" in res.skipped["inc-o"]
        assert [b["backup_id"] for b in fresh.list_completed()] == ["inc-r", "full-r"]
        b = fresh.get_backup("inc-r")
        assert b is not None and b["recovery_point"]["chain"] == ["full-r", "inc-r"]
        assert b["retention_until"] == T0 + timedelta(hours=6, days=7)
        # a manifest written before the typed provenance: its run in extra, the creator derived from it
        assert b["created_by"] == "airflow:wedsync_full_backup" and b["checksum"] == inc.sha256()
        assert b["dag_id"] == "wedsync_full_backup" and b["run_id"] == "run-inc-r"
        # Running it again changes nothing.
        again = fresh.rebuild_from_manifests(found, retention_days={"full": 30, "incremental": 7})
        assert again.rebuilt == ["full-r", "inc-r"]
        with fresh.connect() as conn:
            assert conn.execute("SELECT count(*) AS n FROM recovery_points").fetchone()["n"] == 2  # type: ignore[index]
            completed = conn.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'backup_completed'")
            assert completed.fetchone()["n"] == 2  # type: ignore[index]
    finally:
        pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{fresh_db}" WITH (FORCE)')
