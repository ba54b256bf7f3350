"""The RPO watchdog against a real catalog: a stale tier alerts once (not every 5 minutes), its end is announced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from wedsync_airflow.notifiers import send_alert
from wedsync_backup.catalog import Catalog
from wedsync_backup.watchdog import breach_history, human, run_watchdog, tier_states

from tests.fixtures.alerts import Inbox
from tests.wedsync_backup.test_catalog import cat, complete, dsn, make_manifest  # noqa: F401 - fixtures

OBJECTIVES = {"full": timedelta(hours=24), "incremental": timedelta(hours=1)}


def test_stale_tier_alerts_once_and_its_end_is_announced(cat: Catalog, alert_inbox: Inbox) -> None:  # noqa: F811
    now = datetime.now(UTC).replace(microsecond=0)
    complete(cat, make_manifest("full-old", at=now - timedelta(hours=30)))
    complete(cat, make_manifest("inc-fresh", parent="full-old", at=now - timedelta(minutes=20)))

    first = run_watchdog(cat, OBJECTIVES, now, notify=send_alert)
    assert first.opened == ["full"] and not first.closed
    assert {s.tier: s.breached for s in first.states} == {"full": True, "incremental": False}
    for minutes in (5, 10, 15):  # the next checks, every 5 minutes: no new alert
        later = run_watchdog(cat, OBJECTIVES, now + timedelta(minutes=minutes), notify=send_alert)
        assert later.ongoing == ["full"] and not later.opened
    alert_inbox.wait(1)
    assert alert_inbox.events() == ["rpo_breach"] and len(alert_inbox.mails) == 1
    text = alert_inbox.mail_text(alert_inbox.mails[0])
    assert "RPO breached for the full tier" in text and "1 d 6 h old" in text  # what happened
    assert "Backup: full-old" in text  # which backup
    assert "airflow dags trigger backup_daily_full" in text  # what to do
    [open_breach] = breach_history(cat, "full")
    assert open_breach["ended_at"] is None and open_breach["alerted_at"] is not None
    assert open_breach["worst_age"] == timedelta(hours=30, minutes=15)

    complete(cat, make_manifest("full-new", at=now + timedelta(minutes=16)))
    end = run_watchdog(cat, OBJECTIVES, now + timedelta(minutes=20), notify=send_alert)
    assert end.closed == ["full"] and not end.opened
    assert run_watchdog(cat, OBJECTIVES, now + timedelta(minutes=25), notify=send_alert).closed == []
    alert_inbox.wait(2)
    assert alert_inbox.events() == ["rpo_breach", "rpo_recovered"]
    assert "full-new" in alert_inbox.hooks[1]["text"] and "lasted about 20 min" in alert_inbox.hooks[1]["text"]
    [closed] = breach_history(cat, "full")
    assert closed["recovered_backup_id"] == "full-new" and closed["end_alerted_at"] is not None


def test_a_tier_without_any_point_is_a_breach(cat: Catalog) -> None:  # noqa: F811
    [state] = tier_states(cat, {"archive": timedelta(days=7)}, datetime.now(UTC))
    assert state.breached and state.age is None and state.newest_backup_id is None
    sent: list = []
    assert run_watchdog(cat, {"archive": timedelta(days=7)}, datetime.now(UTC), notify=sent.append).opened == [
        "archive"
    ]
    assert "there is no verified archive point" in sent[0].what_happened


def test_human_durations() -> None:
    assert human(timedelta(days=1, hours=6, minutes=3)) == "1 d 6 h"
    assert human(timedelta(minutes=65)) == "1 h 5 min"
    assert human(timedelta(seconds=20)) == "under a minute"
