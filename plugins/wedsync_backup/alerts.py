"""Alerts for people: what happened, to which backup or wedding, and what to do now.

This module only builds and renders alerts; delivering them is the Airflow notifiers' job
(plugins/wedsync_airflow/notifiers.py: e-mail through an SMTP connection, a Slack-compatible webhook
through an HTTP connection). An alert never carries table data, keys or connection secrets.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("critical", "warning", "info")
_ICONS = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


@dataclass
class Alert:
    event: str  # one of assurance_policy.ALERT_EVENTS
    severity: str  # critical | warning | info
    title: str  # one line: what happened
    what_happened: str
    what_to_do: str
    backup_id: str | None = None
    wedding_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"[WedSync Backup] {self.severity.upper()}: {self.title}"

    def lines(self) -> list[str]:
        out = [self.subject, "", f"What happened: {self.what_happened}"]
        if self.backup_id:
            out.append(f"Backup: {self.backup_id}")
        if self.wedding_id:
            out.append(f"Wedding: {self.wedding_id}")
        out.append(f"What to do: {self.what_to_do}")
        if self.details:
            out += ["", "Details:"] + [f"  {k}: {v}" for k, v in self.details.items() if v not in (None, "", [])]
        return out

    def text(self) -> str:
        return "\n".join(self.lines()) + "\n"

    def html(self) -> str:
        return f'<pre style="font-family: monospace">{html.escape(self.text())}</pre>'

    def webhook_payload(self) -> dict[str, Any]:
        """Slack-compatible: ``text`` for any client, ``blocks`` for Slack, ``wedsync`` for machines."""
        fields = [f"*What happened:* {self.what_happened}"]
        if self.backup_id:
            fields.append(f"*Backup:* `{self.backup_id}`")
        if self.wedding_id:
            fields.append(f"*Wedding:* `{self.wedding_id}`")
        fields.append(f"*What to do:* {self.what_to_do}")
        return {
            "text": self.text(),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": self.subject[:150]}},
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": f"{_ICONS[self.severity]} " + "\n".join(fields)},
                },
            ],
            "wedsync": {
                "event": self.event,
                "severity": self.severity,
                "title": self.title,
                "backup_id": self.backup_id,
                "wedding_id": self.wedding_id,
                "what_happened": self.what_happened,
                "what_to_do": self.what_to_do,
                "details": {k: str(v) for k, v in self.details.items()},
            },
        }


# --- the events ----------------------------------------------------------------------------------------
def backup_failed(
    *, dag_id: str, task_id: str, run_id: str, backup_id: str | None, error: str, try_number: int | None = None
) -> Alert:
    return Alert(
        event="backup_failed",
        severity="critical",
        title=f"Backup {backup_id} failed in {dag_id}.{task_id}" if backup_id else f"{dag_id}.{task_id} failed",
        what_happened=f"Task {task_id} of {dag_id} failed"
        + (f" after {try_number} attempt(s)" if try_number else "")
        + f": {error}",
        what_to_do=(
            "The backup is marked failed and none of its copies counts. Read the error above (it says what to "
            f"fix) and the log of task {task_id}, fix the cause, then trigger {dag_id} again "
            f"(airflow dags trigger {dag_id}). Until then the newest verified backup is older than planned."
        ),
        backup_id=backup_id,
        details={"dag_id": dag_id, "task_id": task_id, "run_id": run_id},
    )


def rpo_breach(*, tier: str, objective: str, age: str | None, newest_backup_id: str | None, dag: str) -> Alert:
    seen = f"the newest verified {tier} recovery point is {age} old" if age else f"there is no verified {tier} point"
    return Alert(
        event="rpo_breach",
        severity="critical",
        title=f"RPO breached for the {tier} tier ({seen})",
        what_happened=f"The {tier} tier promises a recovery point at most {objective} old, and {seen}. "
        "Data written since then would be lost in a disaster.",
        what_to_do=f"Check the recent runs of {dag} in the Airflow UI (failed, stuck or paused?), fix the cause and "
        f"trigger it (airflow dags trigger {dag}). You will be told when the breach is over.",
        backup_id=newest_backup_id,
        details={"tier": tier, "objective": objective, "age": age or "no point at all", "dag": dag},
    )


def rpo_recovered(*, tier: str, objective: str, age: str, backup_id: str, lasted: str) -> Alert:
    return Alert(
        event="rpo_recovered",
        severity="info",
        title=f"RPO breach over for the {tier} tier",
        what_happened=f"A new verified {tier} recovery point ({backup_id}, {age} old) is within the objective "
        f"of {objective} again. The breach lasted about {lasted}.",
        what_to_do="Nothing; if the cause may come back, note it in the incident record.",
        backup_id=backup_id,
        details={"tier": tier, "objective": objective, "breach_lasted": lasted},
    )


def drill_failed(*, backup_id: str, problems: list[str], from_target: str | None, dag_run: str) -> Alert:
    return Alert(
        event="drill_failed",
        severity="critical",
        title=f"Restore drill of backup {backup_id} FAILED",
        what_happened=f"Restoring backup {backup_id}"
        + (f" from its {from_target} copy" if from_target else "")
        + f" into a scratch database did not give back the data: {'; '.join(problems[:5])}",
        what_to_do=(
            "Do not count on this backup. Read the drill's backup_tests row (errors_found) and the task log; "
            "if a copy is damaged, run backup_scrub to repair it from a healthy copy; if the data itself is "
            "wrong, take a new full backup now (airflow dags trigger backup_daily_full) and investigate."
        ),
        backup_id=backup_id,
        details={"drill_run": dag_run, "problems": len(problems)},
    )


def backup_damaged(*, backup_id: str, findings: dict[str, str]) -> Alert:
    return Alert(
        event="backup_damaged",
        severity="critical",
        title=f"Backup {backup_id} is DAMAGED: no intact copy is left",
        what_happened="The scrub re-read every copy of this backup and none is intact: "
        + "; ".join(f"{t}: {e}" for t, e in findings.items()),
        what_to_do=(
            "This backup can no longer be restored and is marked damaged in the catalog (restores and drills "
            "skip it). Take a new full backup now (airflow dags trigger backup_daily_full), then find out "
            "what damaged the storage (disk, bucket lifecycle rule, someone deleting objects)."
        ),
        backup_id=backup_id,
        details={"copies_checked": len(findings)},
    )


def files_damaged(*, backup_id: str, problems: list[str]) -> Alert:
    """Source objects (photos, documents) missing or not matching their recorded checksum at a backup."""
    return Alert(
        event="files_damaged",
        severity="warning",
        title=f"{len(problems)} platform file(s) missing or corrupt at backup {backup_id}",
        what_happened="The files bucket does not hold these objects as the files table records them (missing, "
        "or another size or SHA-256). The backup kept each one's last good version instead of the damage.",
        what_to_do="Restore the listed objects (emergency_restore with components=['files']) or re-upload them, "
        "and find what damaged them.",
        backup_id=backup_id,
        details={"objects": "; ".join(problems[:20])},
    )


def content_lost(*, objects: list[str], findings: list[str]) -> Alert:
    """Shared content objects (photos, documents of every backup listing them) with no intact copy left."""
    return Alert(
        event="files_content_lost",
        severity="critical",
        title=f"{len(objects)} content object(s) of the files backup have NO intact copy left",
        what_happened="The scrub read the shared content store on every target and found these objects missing "
        "or damaged everywhere: " + "; ".join(findings[:20]),
        what_to_do="Every backup whose file state lists them cannot bring those files back. Take a new full "
        "backup now (airflow dags trigger backup_daily_full): objects still intact in the files bucket are "
        "stored again. Then find out what damaged the storage.",
        details={"objects": "; ".join(objects[:20]), "count": len(objects)},
    )


def copy_repaired(*, backup_id: str, target: str, source: str, finding: str) -> Alert:
    return Alert(
        event="copy_repaired",
        severity="warning",
        title=f"Copy of backup {backup_id} on {target} was damaged and has been repaired",
        what_happened=f"The scrub found the {target} copy bad ({finding}) and rewrote it from the verified "
        f"{source} copy; it verifies again.",
        what_to_do=f"Nothing urgent. If {target} keeps needing repairs, check that storage.",
        backup_id=backup_id,
        details={"target": target, "repaired_from": source},
    )


def restore_event(
    *,
    phase: str,
    dag_id: str,
    run_id: str,
    target_conn_id: str | None,
    backup_id: str | None,
    reason: str | None,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> Alert:
    """restore_started / restore_finished / restore_failed of an emergency restore."""
    where = f"into {target_conn_id}" if target_conn_id else ""
    if phase == "started":
        return Alert(
            event="restore_started",
            severity="warning",
            title=f"Emergency restore started {where}".strip(),
            what_happened=f"{dag_id} run {run_id} is restoring {backup_id or 'the planned backup'} {where} "
            f"(reason: {reason or 'not given'}).",
            what_to_do="Keep writes away from the target database until the restore has finished; you will be "
            "told when it has.",
            backup_id=backup_id,
            details={"dag_id": dag_id, "run_id": run_id},
        )
    if phase == "finished":
        return Alert(
            event="restore_finished",
            severity="info",
            title=f"Emergency restore finished {where}".strip(),
            what_happened=f"{dag_id} run {run_id} restored {backup_id or 'the backup'} {where}.",
            what_to_do="Check the application against the restored database, then switch traffic to it. The "
            "restored moment and the data loss are in the restore task's result.",
            backup_id=backup_id,
            details={
                k: v for k, v in (result or {}).items() if k in ("rows", "tables", "seconds", "data_loss_minutes")
            },
        )
    return Alert(
        event="restore_failed",
        severity="critical",
        title=f"Emergency restore FAILED {where}".strip(),
        what_happened=f"{dag_id} run {run_id} could not restore {backup_id or 'the backup'}: {error}",
        what_to_do="The target was put back as it was. Fix what the error names (or pick from_target=another "
        "copy) and trigger emergency_restore again.",
        backup_id=backup_id,
        details={"dag_id": dag_id, "run_id": run_id},
    )
