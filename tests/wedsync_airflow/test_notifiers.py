"""Alerts reach a real SMTP server and a real HTTP receiver, say what happened, which backup, what to do."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from wedsync_airflow.notifiers import WedSyncAlertNotifier, send_alert
from wedsync_backup import alerts
from wedsync_backup.assurance_policy import load_assurance
from wedsync_backup.errors import ConfigError

from devstack.ports import free_port
from tests.fixtures.alerts import Inbox, alerts_section, write_policy


class _TI:
    """The few task-instance attributes a callback reads (the context Airflow passes it)."""

    dag_id = "backup_daily_full"
    task_id = "backup"
    try_number = 3

    def xcom_pull(self, task_ids: str, key: str) -> str | None:
        # backup_daily_full's one task publishes its backup id itself (the other tiers, from their preflight)
        return "full-20261129T020000Z-abcd1234" if (task_ids, key) == ("backup", "backup_id") else None


def failure_context() -> dict:
    return {
        "ti": _TI(),
        "dag_run": SimpleNamespace(run_id="scheduled__2026-11-29T02:00:00+00:00"),
        "exception": "Cannot connect to wedsync_source: connection refused. To fix: check the host",
        "params": {},
    }


def test_failed_backup_alert_arrives_by_mail_and_webhook(alert_inbox: Inbox) -> None:
    WedSyncAlertNotifier("backup_failed")(failure_context())
    alert_inbox.wait(1)
    assert len(alert_inbox.mails) == 1 and len(alert_inbox.hooks) == 1
    mail = alert_inbox.mails[0]
    assert mail["To"] == "oncall@wedsync.test" and mail["From"] == "backup@wedsync.test"
    assert mail["X-WedSync-Event"] == "backup_failed"
    text = alert_inbox.mail_text(mail)
    assert "CRITICAL" in mail["Subject"] and "full-20261129T020000Z-abcd1234" in mail["Subject"]
    assert "Task backup of backup_daily_full failed after 3 attempt(s)" in text  # what happened
    assert "connection refused" in text
    assert "Backup: full-20261129T020000Z-abcd1234" in text  # which backup
    assert "airflow dags trigger backup_daily_full" in text  # what to do
    hook = alert_inbox.hooks[0]
    assert hook["wedsync"]["event"] == "backup_failed"
    assert hook["wedsync"]["backup_id"] == "full-20261129T020000Z-abcd1234"
    assert "What to do:" in hook["text"] and hook["blocks"][0]["type"] == "header"


def test_a_failing_channel_is_logged_and_the_others_still_deliver(
    alert_inbox: Inbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # nothing listens on this port: the webhook fails, the e-mail still goes, nothing raises
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERTS_WEBHOOK", json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{free_port()}"})
    )
    alert = alerts.rpo_breach(
        tier="full", objective="1 day", age="1 day 3 h", newest_backup_id="full-x", dag="backup_daily_full"
    )
    with caplog.at_level(logging.ERROR):
        outcome = send_alert(alert)
    assert outcome["alerts_smtp"] == "sent"
    assert "ConnectionError" in outcome["alerts_webhook"]
    assert "Could not send alert rpo_breach through connection alerts_webhook" in caplog.text
    assert len(alert_inbox.mails) == 1 and not alert_inbox.hooks


def test_restore_alerts_skip_dry_runs(alert_inbox: Inbox) -> None:
    ctx = {**failure_context(), "params": {"dry_run": True, "target_conn_id": "restore_db", "reason": "INC-1"}}
    WedSyncAlertNotifier("restore_started")(ctx)
    assert not alert_inbox.mails
    ctx["params"]["dry_run"] = False
    WedSyncAlertNotifier("restore_started")(ctx)
    alert_inbox.wait(1)
    assert alert_inbox.events() == ["restore_started"]
    assert "restore_db" in alert_inbox.mail_text(alert_inbox.mails[0]) and "INC-1" in alert_inbox.hooks[0]["text"]


def test_alerts_policy_is_validated(tmp_path) -> None:
    bad = write_policy(tmp_path / "p.yaml", alerts={"email": {"conn_id": "x", "to": "not-an-address"}})
    with pytest.raises(ConfigError, match=r"alerts\.email\.to"):
        load_assurance(bad)
    with pytest.raises(ConfigError, match=r"rpo\.full.*15m, 1h"):
        load_assurance(write_policy(tmp_path / "q.yaml", rpo={"full": "soon"}))
    ok = load_assurance(
        write_policy(tmp_path / "r.yaml", alerts=alerts_section(), rpo={"archive": None, "full": "12h"})
    )
    assert ok.alerts.email and ok.alerts.webhook and set(ok.rpo) == {"incremental", "full"}
    assert ok.rpo["full"].total_seconds() == 12 * 3600
    assert not load_assurance(write_policy(tmp_path / "s.yaml")).alerts.channels  # the demo policy sends nothing
