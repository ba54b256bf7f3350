"""The wedding backup command on the demo platform: real PostgreSQL, the policy's three targets over the wire."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from wedsync_backup.catalog import Catalog
from wedsync_backup.commands import backup
from wedsync_backup.commands import wedding_backup as cmd
from wedsync_backup.commands.prune import prune
from wedsync_backup.commands.resources import NothingToDo, RunRef
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError, IntegrityError
from wedsync_backup.policy import load_policy
from wedsync_backup.repository import read_manifest
from wedsync_backup.watchdog import run_watchdog
from wedsync_backup.weddings.export import read_wedding_slice
from wedsync_backup.weddings.phases import local_today

from devstack.postgres import Cluster
from tests.fixtures.backups import corrupt
from tests.fixtures.storage import StorageTargets
from tests.wedsync_backup.commands.conftest import World

NOW = datetime.now(UTC)  # wedding backups record the source's real snapshot time: set again by wworld, as a
# parallel run may collect this module minutes before it runs it


@pytest.fixture(scope="module")
def wworld(pg_cluster: Cluster, demo_source: str, module_catalog: Catalog, module_targets: StorageTargets) -> World:
    """Demo weddings 1 (tomorrow: execution, its eve), 2 (in 3 days), 3 (in 20 days: not due), 4 (in 20 days,
    with a settings row widening its window to 30 days); every other wedding is years away."""
    global NOW
    NOW = datetime.now(UTC)
    policy = load_policy(env={})
    w = World(
        pg_cluster,
        demo_source,
        module_catalog.dsn.split("dbname=")[-1],
        policy,
        {s.name: s for s in module_targets},
        Keyring(os.urandom(32)),
    )
    today = local_today(policy.weddings, NOW)
    w.write("UPDATE weddings SET wedding_date = DATE '2040-01-01' + id::int")
    for wid, days in ((1, 1), (2, 3), (3, 20), (4, 20)):  # 1 stays on its eve if a test crosses midnight
        w.write("UPDATE weddings SET wedding_date = %s WHERE id = %s", (today + timedelta(days=days), wid))
    w.catalog.migrate()
    w.catalog.save_wedding_settings("4", wedding_date=today + timedelta(days=20), actor="test", proximity_days=30)
    return w


def run(dag_id: str = "backup_wedding_proximity", at: datetime | None = None) -> RunRef:
    return RunRef(dag_id, f"manual__{uuid.uuid4().hex[:8]}", at or NOW, triggered_by="tester")


def source_count(w: World, sql: str, wid: str) -> int:
    with psycopg.connect(w.cluster.dsn(w.source_db)) as conn:
        return conn.execute(sql, (int(wid),)).fetchone()[0]


def read_back(w: World, target: str, backup_id: str, wedding_id: str) -> dict[str, list[bytes]]:
    return {
        f"{s.schema}.{s.name}": list(s.lines)
        for s in read_wedding_slice(w.storages[target], w.ring, backup_id, wedding_id)
    }


def test_proximity_run_backs_up_each_due_wedding_alone(wworld: World) -> None:
    w = wworld
    res = w.resources()
    backup_id = cmd.backup_weddings(res, run())
    row = w.catalog.get_backup(backup_id)
    assert row is not None and row["status"] == "completed" and row["backup_type"] == "wedding"
    assert row["recovery_point"]["point_type"] == "wedding" and len(row["replicas"]) == 3
    weddings = {r["wedding_id"]: r for r in _wedding_rows(w, backup_id)}
    assert sorted(weddings) == ["1", "2", "4"]
    assert weddings["1"]["phase"] == "execution" and weddings["2"]["phase"] == "preparation"
    assert weddings["1"]["retention_policy"] == "extended"
    guests = source_count(w, "SELECT count(*) FROM guests WHERE wedding_id = %s", "2")
    assert weddings["2"]["row_counts"]["public.guests"] == guests > 0
    assert weddings["2"]["parent_row_counts"]["public.suppliers"] >= 1

    m = read_manifest(w.storages["offsite"], backup_id)
    assert m.weddings is not None and [e.wedding_id for e in m.weddings.weddings] == ["1", "2", "4"]
    # one bundle for the batch, a piece per wedding: three objects are not written, copied and verified per run
    assert (
        [b.key for b in m.weddings.bundles]
        == [e.object.key for e in m.weddings.weddings][:1]
        == [f"backups/{backup_id}/weddings/batch-00000.wsb"]
    )
    assert [e.offset for e in m.weddings.weddings] == [0, *(0 + sum(
        e.object.stored_bytes for e in m.weddings.weddings[:i]) for i in (1, 2))]  # fmt: skip
    assert m.objects().count(m.weddings.bundles[0]) == 1 and m.weddings.root == "public.weddings"
    # One wedding read back alone, from each kind of target: its rows, its parents, nobody else's rows.
    for target in ("offsite", "secondary"):
        back = read_back(w, target, backup_id, "2")
        assert len(back["public.guests"]) == guests
        assert [line.split(b"\t")[0] for line in back["public.weddings"]] == [b"2"]
        assert len(back["public.communications"]) == source_count(
            w, "SELECT count(*) FROM communications WHERE wedding_id = %s", "2"
        )
        supplier = source_count(w, "SELECT supplier_id FROM weddings WHERE id = %s", "2")
        assert str(supplier).encode() in {line.split(b"\t")[0] for line in back["public.suppliers"]}
    with pytest.raises(IntegrityError, match="holds no wedding '3'"):
        read_back(w, "primary", backup_id, "3")

    # Six minutes later only the wedding on its day is due again (every 5 minutes); two later, nothing.
    later = cmd.backup_weddings(res, run(at=NOW + timedelta(minutes=6)), now=NOW + timedelta(minutes=6))
    assert [r["wedding_id"] for r in _wedding_rows(w, later)] == ["1"]
    with pytest.raises(NothingToDo):
        cmd.backup_weddings(res, run(), now=NOW + timedelta(minutes=2))


def test_backup_wedding_now_and_unknown_ids(wworld: World) -> None:
    w = wworld
    res = w.resources()
    before = _operations(w)
    with pytest.raises(ConfigError, match=r"Unknown wedding id.*: 999999, nope"):
        cmd.backup_weddings(res, run("backup_wedding_now"), wedding_ids=["5", "999999", "nope"])
    assert _operations(w) == before  # refused before anything was written
    backup_id = cmd.backup_weddings(
        res, run("backup_wedding_now"), wedding_ids=["7", "5"], reason="guest list import", now=NOW
    )
    row = w.catalog.get_backup(backup_id)
    assert row is not None and row["reason"] == "guest list import" and row["status"] == "completed"
    m = read_manifest(w.storages["primary"], backup_id)
    assert m.weddings is not None and m.weddings.requested == ["7", "5"]
    assert {e.phase for e in m.weddings.weddings} == {"planning"}
    assert _operations(w) == before + 1


def test_failed_copy_leaves_no_completed_row(wworld: World) -> None:
    w = wworld
    res = w.resources()
    r = run("backup_wedding_now")
    begun = cmd.begin(res, r, wedding_ids=["6"], now=NOW)
    for n in begun.batches:
        cmd.export_batch(res, begun.backup_id, n)
    sealed = cmd.seal(res, begun.backup_id, r)
    m = read_manifest_pending(w, begun.backup_id, sealed.manifest_sha256)
    corrupt(w.storages["primary"], m.weddings.weddings[0].object.key)  # type: ignore[union-attr]
    with pytest.raises(IntegrityError):
        backup.replicate(res, begun.backup_id, sealed.manifest_sha256, "secondary")
    assert cmd.mark_failed(res, begun.backup_id) is True
    row = w.catalog.get_backup(begun.backup_id)
    assert row is not None and row["status"] == "failed" and _wedding_rows(w, begun.backup_id) == []


def test_snapshot_released_after_a_run(wworld: World) -> None:
    with psycopg.connect(wworld.cluster.dsn(wworld.source_db)) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'wedsync_wedding_snapshot:%'"
        ).fetchone()[0]
    assert left == 0


def read_manifest_pending(w: World, backup_id: str, sha: str):  # type: ignore[no-untyped-def]
    return backup.load_pending_manifest(w.resources(), backup_id, sha)


def _wedding_rows(w: World, backup_id: str) -> list[dict]:
    with w.catalog.connect() as conn:
        return conn.execute(
            "SELECT * FROM wedding_backups WHERE backup_id = %s ORDER BY wedding_id", (backup_id,)
        ).fetchall()


def _operations(w: World) -> int:
    with w.catalog.connect() as conn:
        return conn.execute("SELECT count(*) AS n FROM backup_operations").fetchone()["n"]


def test_watchdog_checks_the_wedding_day_rpo(wworld: World) -> None:
    """Wedding 1 is on its day: its newest wedding backup must be younger than 5 minutes; weddings 2 and 4
    are due days away: younger than 15 minutes (the proximity tier's pace). A breach alerts once each."""
    w = wworld
    alerts: list = []
    policy = w.policy.weddings
    late = run_watchdog(w.catalog, {}, NOW + timedelta(minutes=30), notify=alerts.append, weddings=policy)
    objectives = {s.tier: s.objective.total_seconds() for s in late.states}
    assert objectives == {"wedding_day:1": 300, "wedding:2": 900, "wedding:4": 900}
    assert sorted(late.opened) == ["wedding:2", "wedding:4", "wedding_day:1"]
    assert len(alerts) == 3 and all("backup_wedding_proximity" in str(a) for a in alerts)
    again = run_watchdog(w.catalog, {}, NOW + timedelta(minutes=35), notify=alerts.append, weddings=policy)
    assert again.opened == [] and len(alerts) == 3  # once, not every 5 minutes
    fine = run_watchdog(w.catalog, {}, NOW, notify=alerts.append, weddings=policy)
    assert sorted(fine.closed) == ["wedding:2", "wedding:4", "wedding_day:1"]
    assert not any(s.breached for s in fine.states)


def test_wedding_backups_are_pruned_by_their_recorded_retention(wworld: World) -> None:
    """The proximity runs kept weddings on their day (extended: 365 days); the newest backup always stays."""
    w = wworld
    res = w.resources()
    proximity = [
        b["backup_id"] for b in w.catalog.list_completed("wedding") if b["dag_id"] == "backup_wedding_proximity"
    ]
    assert len(proximity) == 2
    kept = prune(res, backup_type="wedding", tier="wedding", now=NOW + timedelta(days=300))
    assert all(ids == [] for ids in kept.pruned.values())
    gone = prune(res, backup_type="wedding", tier="wedding", now=NOW + timedelta(days=366))
    assert sorted(gone.pruned["primary"]) == sorted(gone.pruned["offsite"]) == sorted(proximity)
    for backup_id in proximity:
        assert w.catalog.get_backup(backup_id)["pruned_at"] is not None  # type: ignore[index]
        assert not w.storages["secondary"].exists(f"backups/{backup_id}/manifest.json")
    assert len(w.catalog.list_completed("wedding")) == 1  # backup_wedding_now's (standard, but the newest)


def test_a_wedding_deleted_during_the_run_is_backed_up_as_the_snapshot_saw_it(wworld: World) -> None:
    """Every batch reads the snapshot begin exported: a delete after it changes nothing in the backup."""
    w = wworld
    res = w.resources()
    r = run("backup_wedding_now")
    begun = cmd.begin(res, r, wedding_ids=["8", "9"], now=NOW)  # the snapshot is held from here on
    w.write("DELETE FROM weddings WHERE id = 9")  # after the snapshot: still in the backup
    for n in begun.batches:
        cmd.export_batch(res, begun.backup_id, n)
    sealed = cmd.seal(res, begun.backup_id, r)
    assert sealed.weddings == 2
    with psycopg.connect(w.cluster.dsn(w.source_db)) as conn:
        assert conn.execute("SELECT count(*) FROM guests WHERE wedding_id = 9").fetchone()[0] == 0
    back = read_back_pending(w, begun.backup_id, sealed.manifest_sha256, "9")
    assert len(back["public.guests"]) > 0  # as the snapshot saw it
    assert cmd.mark_failed(res, begun.backup_id) is True


def read_back_pending(w: World, backup_id: str, sha: str, wedding_id: str) -> dict[str, list[bytes]]:
    m = read_manifest_pending(w, backup_id, sha)
    return {
        f"{s.schema}.{s.name}": list(s.lines)
        for s in read_wedding_slice(w.storages["primary"], w.ring, backup_id, wedding_id, manifest=m)
    }
