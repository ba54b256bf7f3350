"""Alert delivery, the one mechanism: Airflow notifiers, configured in the policy's ``alerts`` section.

- ``EmailAlertNotifier``: e-mail through an SMTP connection (SmtpHook).
- ``WebhookAlertNotifier``: Slack-compatible JSON through an HTTP connection (HttpHook).
- ``WedSyncAlertNotifier``: a task callback (``on_failure_callback=...``) that builds the alert from the
  task's context and sends it through every configured channel.
- ``send_alert``: what operators call for an alert they built themselves (drill failed, damaged backup...).

A failing channel never fails the task that raised the alert: the failure is logged, with the alert, and the
other channels still get it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseNotifier
from wedsync_backup import alerts
from wedsync_backup.alerts import Alert
from wedsync_backup.assurance_policy import EmailChannel, WebhookChannel, load_assurance
from wedsync_backup.errors import WedSyncError

log = logging.getLogger(__name__)
WEBHOOK_TIMEOUT_SECONDS = 10


class EmailAlertNotifier(BaseNotifier):
    """One alert as an e-mail, through the SMTP connection of ``channel``."""

    def __init__(self, *, alert: Alert, channel: EmailChannel) -> None:
        super().__init__()
        self.alert = alert
        self.channel = channel

    def notify(self, context: Any) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=self.channel.conn_id) as hook:
            hook.send_email_smtp(
                to=list(self.channel.to),
                subject=self.alert.subject,
                html_content=self.alert.html(),
                from_email=self.channel.from_email or hook.from_email or "wedsync-backup@localhost",
                custom_headers={"X-WedSync-Event": self.alert.event},
            )


class WebhookAlertNotifier(BaseNotifier):
    """One alert as Slack-compatible JSON, POSTed through the HTTP connection of ``channel``."""

    def __init__(self, *, alert: Alert, channel: WebhookChannel) -> None:
        super().__init__()
        self.alert = alert
        self.channel = channel

    def notify(self, context: Any) -> None:
        from airflow.providers.http.hooks.http import HttpHook

        HttpHook(method="POST", http_conn_id=self.channel.conn_id).run(
            self.channel.endpoint,
            json=self.alert.webhook_payload(),
            headers={"Content-Type": "application/json"},
            extra_options={"timeout": WEBHOOK_TIMEOUT_SECONDS},
        )


def _notifier(alert: Alert, channel: EmailChannel | WebhookChannel) -> BaseNotifier:
    if isinstance(channel, EmailChannel):
        return EmailAlertNotifier(alert=alert, channel=channel)
    return WebhookAlertNotifier(alert=alert, channel=channel)


def send_alert(alert: Alert, *, policy_path: str | None = None, context: Any = None) -> dict[str, str]:
    """Send ``alert`` through every channel the policy sets; returns {channel conn id: 'sent' or the error}.

    Never raises: an alert that cannot be delivered is logged (with its text) so the task log still has it.
    """
    level = logging.ERROR if alert.severity == "critical" else logging.WARNING
    log.log(level, "ALERT %s\n%s", alert.event, alert.text())
    try:
        policy = load_assurance(policy_path)
    except WedSyncError as e:
        log.error("Alert %s not sent: the policy's alerts section is invalid: %s", alert.event, e)
        return {"policy": str(e)}
    if alert.event not in policy.alerts.events:
        log.info("Alert %s not sent: not listed in alerts.events", alert.event)
        return {}
    if not policy.alerts.channels:
        log.warning("Alert %s not sent: the policy sets no alert channel (alerts.email, alerts.webhook)", alert.event)
    outcome: dict[str, str] = {}
    for channel in policy.alerts.channels:
        try:
            _notifier(alert, channel).notify(context or {})
            outcome[channel.conn_id] = "sent"
        except Exception as e:  # a broken channel must never fail the backup
            outcome[channel.conn_id] = f"{type(e).__name__}: {e}"
            log.error(
                "Could not send alert %s through connection %s (%s): %s. To fix: check that connection "
                "(host, port, credentials) and the policy's alerts section",
                alert.event,
                channel.conn_id,
                type(channel).__name__,
                e,
            )
    return outcome


# --- callbacks built from a task's context ---------------------------------------------------------------
def _xcom(context: Any, task_id: str, key: str) -> Any:
    try:
        return context["ti"].xcom_pull(task_ids=task_id, key=key)
    except Exception:  # no XCom (the task never ran): the alert goes out without it
        return None


def _backup_failed(context: Any) -> Alert:
    ti = context["ti"]
    # the tiers with a preflight task publish it there; backup_daily_full's one task publishes it itself
    backup_id = _xcom(context, "preflight", "backup_id") or _xcom(context, "backup", "backup_id")
    return alerts.backup_failed(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=str(context["dag_run"].run_id),
        backup_id=backup_id if backup_id not in ("", "None") else None,
        error=str(context.get("exception") or "see the task log"),
        try_number=getattr(ti, "try_number", None),
    )


def _restore(phase: str) -> Callable[[Any], Alert]:
    def build(context: Any) -> Alert:
        params = context.get("params") or {}
        plan = _xcom(context, "plan", "return_value") or {}
        return alerts.restore_event(
            phase=phase,
            dag_id=context["ti"].dag_id,
            run_id=str(context["dag_run"].run_id),
            target_conn_id=params.get("target_conn_id"),
            backup_id=plan.get("backup_id") or params.get("backup_id"),
            reason=params.get("reason"),
            error=str(context.get("exception") or ""),
            result=_xcom(context, context["ti"].task_id, "return_value") if phase == "finished" else None,
        )

    return build


_BUILDERS: dict[str, Callable[[Any], Alert]] = {
    "backup_failed": _backup_failed,
    "restore_started": _restore("started"),
    "restore_finished": _restore("finished"),
    "restore_failed": _restore("failed"),
}


class WedSyncAlertNotifier(BaseNotifier):
    """A task callback: ``on_failure_callback=WedSyncAlertNotifier("backup_failed")``.

    Builds the alert from the task's context and sends it through every channel in the policy. Restore
    alerts are not sent for dry runs (nothing is touched).
    """

    def __init__(self, event: str, *, policy_path: str | None = None) -> None:
        super().__init__()
        if event not in _BUILDERS:
            raise ValueError(f"No alert is built from a task context for event {event!r}; use one of {list(_BUILDERS)}")
        self.event = event
        self.policy_path = policy_path

    def notify(self, context: Any) -> None:
        params = context.get("params") or {}
        if self.event.startswith("restore_") and params.get("dry_run") not in (False, "false", "False"):
            return
        try:
            alert = _BUILDERS[self.event](context)
        except Exception as e:  # never let a callback hide the task's own outcome
            log.error("Could not build alert %s from the task context: %s", self.event, e)
            return
        send_alert(alert, policy_path=self.policy_path, context=context)


def alert_on(event: str) -> WedSyncAlertNotifier:
    """For DAG files: ``default_args={"on_failure_callback": alert_on("backup_failed")}``."""
    return WedSyncAlertNotifier(event)
