"""Scrub and self-healing on real targets (local, S3 over moto, GCS emulator) and a real catalog."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

import pytest
from wedsync_airflow.notifiers import send_alert
from wedsync_backup.backup_tests import latest_tests
from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring
from wedsync_backup.drill import DrillRequest, choose_backup, healthy_copies, refuse_damaged_copy
from wedsync_backup.errors import ConfigError
from wedsync_backup.repository import read_manifest
from wedsync_backup.scrub import MB, CopyCheck, plan_today, record_copy_state, run_scrub
from wedsync_backup.verify import verify_copy

from devstack.postgres import Cluster
from tests.fixtures.alerts import Inbox
from tests.fixtures.backups import commit_backup, corrupt
from tests.fixtures.storage import StorageTargets
from tests.wedsync_backup.test_export import pg_target, source_db  # noqa: F401 - fixture

RING = Keyring(os.urandom(32))


def scrub(cat: Catalog, targets: StorageTargets, backup_id: str, run_id: str):
    return run_scrub(
        cat,
        {s.name: s for s in targets},
        RING,
        cycle_days=7,
        budget_bytes=1024 * MB,
        now=datetime.now(UTC),
        notify=send_alert,
        tested_by="pytest",
        dag_id="backup_scrub",
        run_id=run_id,
        only={backup_id},
    )


@pytest.fixture
def backup_of(module_catalog: Catalog, module_targets: StorageTargets, pg_cluster: Cluster, source_db: str):  # noqa: F811
    def make(backup_id: str):
        return commit_backup(module_catalog, module_targets, pg_target(pg_cluster, source_db), RING, backup_id)

    return make


def test_a_damaged_and_a_missing_copy_are_repaired_from_a_healthy_one_and_recorded(
    backup_of,
    module_catalog: Catalog,
    module_targets: StorageTargets,
    alert_inbox: Inbox,
) -> None:
    m = backup_of("full-scrub-repair")
    victim = max((p for t in m.tables for p in t.parts), key=lambda o: o.stored_bytes)
    corrupt(module_targets.secondary, victim.key)
    module_targets.offsite.delete([victim.key])

    result = scrub(module_catalog, module_targets, m.backup_id, "scrub-1")
    by_target = {c.target: c for c in result.checks}
    assert by_target["primary"].intact and by_target["primary"].finding is None
    assert (
        by_target["secondary"].repaired_from == "primary" and "failed authentication" in by_target["secondary"].finding
    )
    assert by_target["offsite"].repaired_from == "primary" and "missing" in by_target["offsite"].finding
    assert not result.damaged_backups and result.bytes_read >= 3 * m.stored_bytes
    for store in module_targets:  # every copy verifies again, as at backup time
        assert verify_copy(read_manifest(store, m.backup_id), store, RING).verified

    rows = {r["target_name"]: r for r in latest_tests(module_catalog, m.backup_id, "integrity_check")}
    assert set(rows) == {"primary", "secondary", "offsite"} and all(r["success"] for r in rows.values())
    assert rows["secondary"]["notes"] == "damaged, repaired from the primary copy and verified again"
    assert victim.key in rows["offsite"]["errors_found"][0] and rows["primary"]["errors_found"] == []
    assert all(r["verified"] for r in module_catalog.get_backup(m.backup_id)["replicas"])
    alert_inbox.wait(2)
    assert sorted(alert_inbox.events()) == ["copy_repaired", "copy_repaired"]

    # a copy the scrub could not repair is not restored from: the restore is pointed at a healthy one
    record_copy_state(module_catalog, CopyCheck(m.backup_id, "secondary", intact=False, finding="bucket emptied"))
    with pytest.raises(ConfigError, match=r"secondary copy .* damaged by the scrub: bucket emptied") as e:
        refuse_damaged_copy(module_catalog, m.backup_id, "secondary")
    assert "healthy copies are primary, offsite" in str(e.value) and "from_target to primary" in e.value.fix
    refuse_damaged_copy(module_catalog, m.backup_id, "primary")


def test_a_backup_with_no_intact_copy_is_marked_damaged_alerts_and_is_skipped(
    backup_of,
    module_catalog: Catalog,
    module_targets: StorageTargets,
    alert_inbox: Inbox,
) -> None:
    m = backup_of("full-scrub-lost")
    for store in module_targets:
        corrupt(store, m.tables[0].parts[0].key)

    result = scrub(module_catalog, module_targets, m.backup_id, "scrub-2")
    assert result.damaged_backups == [m.backup_id] and not result.repaired
    row = module_catalog.get_backup(m.backup_id)
    assert row["status"] == "damaged" and row["damaged_at"] is not None and "no intact copy" in row["error"]
    assert not any(r["verified"] for r in row["replicas"])
    alert_inbox.wait(1)
    assert alert_inbox.events() == ["backup_damaged"]
    text = alert_inbox.mail_text(alert_inbox.mails[0])
    assert f"Backup {m.backup_id} is DAMAGED" in text and "airflow dags trigger backup_daily_full" in text

    # drills skip it, and say why
    assert m.backup_id not in {b["backup_id"] for b in module_catalog.list_completed()}
    with pytest.raises(ConfigError, match=rf"{m.backup_id} cannot be drilled: it is damaged"):
        choose_backup(module_catalog, DrillRequest("manual", backup_id=m.backup_id), random.Random())
    with pytest.raises(ConfigError, match=rf"Backup {m.backup_id} is marked damaged"):
        refuse_damaged_copy(module_catalog, m.backup_id, "offsite")  # emergency_restore's plan says so
    healthy, damaged = healthy_copies(module_catalog, m.backup_id, ["primary", "secondary", "offsite"])
    assert healthy == [] and set(damaged) == {"primary", "secondary", "offsite"}
    # a second scrub does not alert again
    alert_inbox.clear()
    scrub(module_catalog, module_targets, m.backup_id, "scrub-3")
    assert not alert_inbox.mails


def test_the_daily_share_follows_the_cycle_and_never_exceeds_the_budget() -> None:
    now = datetime(2026, 11, 29, tzinfo=UTC)
    fresh = now - timedelta(days=1)
    queue = [
        {"backup_id": f"b{i}", "stored_bytes": 100 * MB, "last_checked": None if i < 2 else fresh} for i in range(14)
    ]
    picked, warnings = plan_today(queue, cycle_days=7, budget_bytes=1024 * MB, now=now)
    assert [q["backup_id"] for q in picked] == ["b0", "b1"]  # 1/7 of 1400 MB, never-checked first
    assert not warnings
    picked, warnings = plan_today(queue, cycle_days=1, budget_bytes=350 * MB, now=now)
    assert len(picked) == 3 and "takes 4 days at the daily budget of 350 MB" in warnings[0]
