"""Restore drills against real PostgreSQL and real targets: a good backup passes; a damaged one or a broken
invariant fails, is recorded and alerts; the scratch database is dropped either way."""

from __future__ import annotations

import os
import random
import time
import uuid
from datetime import datetime

import pytest
from wedsync_airflow.notifiers import send_alert
from wedsync_backup.assurance_policy import ValidationQuery, load_assurance
from wedsync_backup.backup_tests import latest_tests
from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring
from wedsync_backup.drill import DrillRequest, check_table, random_moment, run_drill, scratch_name
from wedsync_backup.incremental import read_changes
from wedsync_backup.logical.decoding import Change, Commit
from wedsync_backup.replicate import replicate
from wedsync_backup.repository import committed_manifests, read_manifest
from wedsync_backup.restore import restore_backup
from wedsync_backup.verify import verify_copies

from devstack.postgres import Cluster
from tests.fixtures.alerts import Inbox
from tests.fixtures.backups import commit_backup, corrupt
from tests.fixtures.storage import StorageTargets
from tests.wedsync_backup.test_export import pg_target
from tests.wedsync_backup.test_incremental import SCHEMA, Chain, drop_db, new_db, write

SHIPPED_QUERIES = load_assurance(env={}).drills.validation_queries


def databases(cluster: Cluster) -> list[str]:
    out = cluster.psql("-At", "-c", "SELECT datname FROM pg_database")
    return out.split()


def drill(cat: Catalog, targets: StorageTargets, cluster: Cluster, ring: Keyring, queries, key: str):
    return run_drill(
        cat,
        {s.name: s for s in targets},
        ring,
        pg_target(cluster, "postgres", "drill_target"),
        DrillRequest(trigger="manual"),
        queries=queries,
        run_key=key,
        tested_by="pytest",
        notify=send_alert,
        dag_id="restore_drill",
        run_id=key,
        rng=random.Random(7),
    )


@pytest.fixture(scope="module")
def backed_up(
    module_targets: StorageTargets,
    module_catalog: Catalog,
    pg_cluster: Cluster,
    demo_source: str,
) -> tuple[Catalog, StorageTargets, Keyring, str]:
    """One committed backup of the demo database for the module; a test that damages it puts it back."""
    ring = Keyring(os.urandom(32))
    m = commit_backup(module_catalog, module_targets, pg_target(pg_cluster, demo_source), ring, "full-drill")
    return module_catalog, module_targets, ring, m.backup_id


def run_row(cat: Catalog, backup_id: str, run_id: str) -> dict:
    [row] = [r for r in latest_tests(cat, backup_id, "restore_test") if r["run_id"] == run_id]
    return row


def test_a_good_backup_passes_its_drill(backed_up, pg_cluster: Cluster, alert_inbox: Inbox) -> None:
    cat, targets, ring, backup_id = backed_up
    result = drill(cat, targets, pg_cluster, ring, SHIPPED_QUERIES, "run-good")
    assert result.passed, result.problems
    assert result.from_target == "primary" and not result.copy_faults
    assert result.tables_checked == len(cat.get_backup(backup_id)["tables_included"])
    assert result.rows_checked == cat.get_backup(backup_id)["total_rows"] > 0
    assert result.validation == {q.name: 0 for q in SHIPPED_QUERIES} and len(SHIPPED_QUERIES) >= 3
    assert set(result.group_usable_seconds) == {"critical", "high", "standard"}
    assert result.group_usable_seconds["critical"] <= result.rto_seconds
    assert scratch_name("run-good") not in databases(pg_cluster)  # dropped at the end
    row = run_row(cat, backup_id, "run-good")
    assert row["success"] and row["status"] == "passed" and row["errors_found"] == []
    assert row["data_samples_verified"] == result.rows_checked and row["data_loss_detected"] is False
    assert row["restore_duration"].total_seconds() == pytest.approx(result.rto_seconds, abs=0.01)
    assert row["tested_by"] == "pytest" and "dropped after the drill" in row["test_environment"]
    assert "restored from primary" in row["notes"] and "RTO" in row["notes"]
    assert cat.get_backup(backup_id)["last_tested"] == row["tested_at"]
    assert not alert_inbox.mails and not alert_inbox.hooks


def test_a_validation_query_returning_rows_fails_the_drill_naming_the_invariant(
    backed_up, pg_cluster: Cluster, alert_inbox: Inbox
) -> None:
    cat, targets, ring, _ = backed_up
    broken = ValidationQuery(
        "every wedding is in the 1990s", "SELECT id FROM public.weddings WHERE wedding_date > '2000-01-01'"
    )
    result = drill(cat, targets, pg_cluster, ring, (*SHIPPED_QUERIES, broken), "run-invariant")
    assert not result.passed and result.from_target == "primary"
    assert result.data_loss_detected is False  # every table matched the manifest
    [problem] = result.problems
    assert "validation query 'every wedding is in the 1990s' failed" in problem and "row(s) violate it" in problem
    alert_inbox.wait(1)
    assert alert_inbox.events() == ["drill_failed"]
    assert "every wedding is in the 1990s" in alert_inbox.hooks[0]["text"]


def test_a_table_corrupted_on_every_copy_fails_the_drill_and_alerts(
    backed_up, pg_cluster: Cluster, alert_inbox: Inbox
) -> None:
    cat, targets, ring, backup_id = backed_up
    tested_before = cat.get_backup(backup_id)["last_tested"]
    guests = next(t for t in read_manifest(targets.primary, backup_id).tables if t.name == "guests")
    key = guests.parts[0].key
    intact = targets.primary.get_bytes(key)
    try:
        for store in targets:
            corrupt(store, key)
        result = drill(cat, targets, pg_cluster, ring, SHIPPED_QUERIES, "run-bad")
    finally:
        for store in targets:
            store.put_bytes(key, intact)
    assert not result.passed and result.from_target is None
    assert set(result.copy_faults) == {"primary", "secondary", "offsite"}
    assert all(guests.parts[0].key in why for why in result.copy_faults.values())
    assert scratch_name("run-bad") not in databases(pg_cluster)
    row = run_row(cat, backup_id, "run-bad")
    assert row["success"] is False and row["data_loss_detected"] is True
    assert any("guests" in e for e in row["errors_found"])
    assert cat.get_backup(backup_id)["last_tested"] == tested_before  # a failed drill proves nothing
    alert_inbox.wait(1)
    assert alert_inbox.events() == ["drill_failed"]
    text = alert_inbox.mail_text(alert_inbox.mails[0])
    assert f"Restore drill of backup {backup_id} FAILED" in text and "guests" in text
    assert "backup_scrub" in text and "backup_daily_full" in text  # what to do


def test_table_checks_find_missing_and_altered_rows_whatever_the_row_order(
    backed_up, pg_cluster: Cluster, empty_db: str
) -> None:
    _, targets, ring, backup_id = backed_up
    m = read_manifest(targets.primary, backup_id)
    target = pg_target(pg_cluster, empty_db, "restore_target")
    restore_backup(m, targets.primary, ring, target)
    guests = next(t for t in m.tables if t.qualified == "public.guests")
    with target.connect(autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no triggers: the rows stay as they were
        assert check_table(conn, guests, targets.primary, ring, backup_id) is None  # export order: sha256
        conn.execute("UPDATE public.guests SET notes = notes WHERE id % 2 = 0")  # same rows, another order
        assert check_table(conn, guests, targets.primary, ring, backup_id) is None  # compared row by row
        conn.execute("UPDATE public.guests SET table_number = 99 WHERE id = (SELECT min(id) FROM public.guests)")
        assert "restored rows differ" in check_table(conn, guests, targets.primary, ring, backup_id)
        conn.execute("DELETE FROM public.guests WHERE id = (SELECT max(id) FROM public.guests)")
        problem = check_table(conn, guests, targets.primary, ring, backup_id)
        assert f"{guests.row_count - 1} rows restored, the manifest says {guests.row_count}" in problem


def test_the_weekly_drill_restores_a_random_moment_of_the_point_in_time_window(
    pg_cluster: Cluster, module_targets: StorageTargets
) -> None:
    """Weekly: a random moment between the full and the last capture, restored exactly as of that moment.

    The validation query encodes the moment: every row committed by then is there, none committed after it.
    """
    db, cat_db = new_db(pg_cluster, SCHEMA), f"cat_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(cat_db)
    cat = Catalog(pg_cluster.dsn(cat_db))
    cat.migrate()
    primary, *others = module_targets
    c = Chain(pg_cluster, db, primary, Keyring(os.urandom(32)), full_id="full-weekly", ddl_capture=False)
    try:
        full = c.start()
        for dst in others:
            replicate(full, primary, dst)
        cat.complete_backup(full, full.sha256(), verify_copies(full, list(module_targets), c.ring), None)
        for i in range(6):
            write(pg_cluster, db, "INSERT INTO guests (name) VALUES (%s)", (f"w{i}",))
            time.sleep(0.05)
        inc = c.backup()
        committed = {
            ev.new["name"]: at
            for at, ev in _row_commits(read_changes(inc, c.store, c.ring))
            if ev.table == ("public", "guests")
        }
        window = committed_manifests(c.store)
        assert random_moment([full], full, random.Random(0)) is None  # nothing captured after the full
        # a seed whose moment falls among the writes, so the restore must split them
        seed = next(
            s
            for s in range(200)
            if min(committed.values()) < random_moment(window, full, random.Random(s)) < max(committed.values())
        )
        moment = random_moment(window, full, random.Random(seed))
        assert moment is not None
        assert (
            datetime.fromisoformat(full.consistent_point["time"])
            <= moment
            <= datetime.fromisoformat(inc.extra["captured_at"])
        )
        present = [n for n, at in committed.items() if at <= moment]
        absent = [n for n, at in committed.items() if at > moment]
        assert present and absent
        as_of_moment = ValidationQuery(
            "the rows of the chosen moment",
            f"SELECT v.n FROM unnest({_text_array(present)}) v(n) WHERE v.n NOT IN (SELECT name FROM guests) "
            f"UNION ALL SELECT name FROM guests WHERE name = ANY({_text_array(absent)})",
        )
        result = run_drill(
            cat,
            {c.store.name: c.store},
            c.ring,
            pg_target(pg_cluster, "postgres", "drill_target"),
            DrillRequest(trigger="weekly"),
            queries=[as_of_moment],
            run_key="run-weekly",
            tested_by="pytest",
            notify=send_alert,
            dag_id="restore_drill",
            run_id="run-weekly",
            rng=random.Random(seed),
        )
        assert result.passed, result.problems
        assert result.point_in_time == moment.isoformat()
        assert result.validation == {"the rows of the chosen moment": 0}
        assert run_row(cat, full.backup_id, "run-weekly")["details"]["point_in_time"] == moment.isoformat()
        assert scratch_name("run-weekly") not in databases(pg_cluster)
    finally:
        c.close()
        drop_db(pg_cluster, db)
        pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{cat_db}" WITH (FORCE)')


def _row_commits(events) -> list[tuple[datetime, Change]]:
    """(commit time, change) of each captured row change."""
    out, pending = [], []
    for _, _, ev in events:
        if isinstance(ev, Change):
            pending.append(ev)
        elif isinstance(ev, Commit):
            out += [(ev.at, ch) for ch in pending]
            pending = []
    return out


def _text_array(names: list[str]) -> str:
    return "ARRAY[" + ", ".join(f"'{n}'" for n in names) + "]::text[]"
