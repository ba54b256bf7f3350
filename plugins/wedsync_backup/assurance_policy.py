"""The policy sections that prove backups over time: ``alerts``, ``rpo``, ``drills``, ``scrub``, ``archive``.

They live in the same policy file as the rest (include/config/backup_policy.yaml) and are validated here,
once, with errors that name the field to fix. Every section is optional; its defaults are the platform's
promises (RPO: incremental 1 h, full 24 h, archive 7 days).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import Rule321Policy, read_policy_file

ALERT_EVENTS = (
    "backup_failed",
    "files_damaged",
    "drill_failed",
    "backup_damaged",
    "copy_repaired",
    "rpo_breach",
    "rpo_recovered",
    "restore_started",
    "restore_finished",
    "restore_failed",
)
DEFAULT_RPO = {"incremental": timedelta(hours=1), "full": timedelta(hours=24), "archive": timedelta(days=7)}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class EmailChannel:
    conn_id: str  # an Airflow SMTP connection (conn_type smtp)
    to: tuple[str, ...]
    from_email: str | None = None


@dataclass(frozen=True)
class WebhookChannel:
    conn_id: str  # an Airflow HTTP connection: host = the webhook's base URL
    endpoint: str = ""  # path appended to the connection's URL (Slack: services/T000/B000/XXX)


@dataclass(frozen=True)
class AlertsPolicy:
    email: EmailChannel | None = None
    webhook: WebhookChannel | None = None
    events: tuple[str, ...] = ALERT_EVENTS  # which events are sent (all by default)

    @property
    def channels(self) -> list[EmailChannel | WebhookChannel]:
        return [c for c in (self.email, self.webhook) if c is not None]


@dataclass(frozen=True)
class ValidationQuery:
    """An invariant of the data: ``sql`` must return no rows in a restored copy."""

    name: str
    sql: str


@dataclass(frozen=True)
class DrillPolicy:
    conn_id: str = "drill_target"
    validation_queries: tuple[ValidationQuery, ...] = ()
    workers: int = 2


@dataclass(frozen=True)
class ScrubPolicy:
    cycle_days: int = 7  # every retained copy is re-verified at least once per cycle
    daily_budget_mb: int = 10240  # bytes read per day at most (the repairs' reads included)


@dataclass(frozen=True)
class ArchivePolicy:
    retention_days: int = 365
    targets: tuple[str, ...] = ("primary", "secondary", "offsite")  # the archive's copies; the first gets the export
    storage_class: dict[str, str] = field(default_factory=dict)  # target -> class (GCS ARCHIVE, S3 GLACIER_IR...)
    lock: bool = True  # retention lock (S3 Object Lock) or object hold (GCS) where the bucket supports it
    rule_321: Rule321Policy = field(default_factory=Rule321Policy)


@dataclass(frozen=True)
class AssurancePolicy:
    alerts: AlertsPolicy = field(default_factory=AlertsPolicy)
    rpo: dict[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_RPO))
    drills: DrillPolicy = field(default_factory=DrillPolicy)
    scrub: ScrubPolicy = field(default_factory=ScrubPolicy)
    archive: ArchivePolicy = field(default_factory=ArchivePolicy)


def parse_duration(value: Any, where: str) -> timedelta:
    """``90`` (minutes), ``"15m"``, ``"1h"``, ``"7d"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return timedelta(minutes=value)
    m = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not m or int(m.group(1)) == 0:
        raise ConfigError(
            f"Backup policy field '{where}' is {value!r}",
            "it must be a positive duration",
            "write it as minutes (90) or with a unit: 15m, 1h, 24h, 7d",
        )
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"Backup policy section '{where}' must be a mapping", f"it is {value!r}", "fix the policy")
    return value


def _text(d: dict[str, Any], key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"Backup policy is missing '{where}.{key}'", fix=f"set {where}.{key} in the policy")
    return value.strip()


def _positive(d: dict[str, Any], key: str, where: str, default: int) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"Backup policy field '{where}.{key}' must be a whole number of at least 1",
            f"it is {value!r}",
            "fix it in the policy",
        )
    return value


def _alerts(raw: dict[str, Any]) -> AlertsPolicy:
    email = webhook = None
    if raw.get("email") is not None:
        e = _mapping(raw["email"], "alerts.email")
        to = e.get("to")
        to = [to] if isinstance(to, str) else to
        if not to or not all(isinstance(a, str) and "@" in a for a in to):
            raise ConfigError(
                "Backup policy field 'alerts.email.to' must list e-mail addresses",
                f"it is {e.get('to')!r}",
                "write it as a list, e.g. to: [oncall@example.com]",
            )
        email = EmailChannel(_text(e, "conn_id", "alerts.email"), tuple(to), e.get("from") or None)
    if raw.get("webhook") is not None:
        w = _mapping(raw["webhook"], "alerts.webhook")
        webhook = WebhookChannel(_text(w, "conn_id", "alerts.webhook"), str(w.get("endpoint") or "").lstrip("/"))
    events = raw.get("events", list(ALERT_EVENTS))
    unknown = sorted(set(events or []) - set(ALERT_EVENTS)) if isinstance(events, list) else [events]
    if unknown:
        raise ConfigError(
            f"Backup policy field 'alerts.events' names unknown events {unknown}",
            fix=f"use some of {', '.join(ALERT_EVENTS)} (or leave it out for all)",
        )
    return AlertsPolicy(email, webhook, tuple(events))


def _rpo(raw: dict[str, Any]) -> dict[str, timedelta]:
    out = dict(DEFAULT_RPO)
    for tier, value in raw.items():
        if value is None or value is False:
            out.pop(tier, None)  # not watched
        else:
            out[tier] = parse_duration(value, f"rpo.{tier}")
    return out


def _drills(raw: dict[str, Any]) -> DrillPolicy:
    queries = []
    for i, q in enumerate(raw.get("validation_queries") or []):
        q = _mapping(q, f"drills.validation_queries[{i}]")
        queries.append(
            ValidationQuery(
                _text(q, "name", f"drills.validation_queries[{i}]"), _text(q, "sql", f"drills.validation_queries[{i}]")
            )
        )
    names = [q.name for q in queries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"Validation queries {dupes} are listed twice", fix="give every invariant its own name")
    return DrillPolicy(
        conn_id=str(raw.get("conn_id") or "drill_target"),
        validation_queries=tuple(queries),
        workers=_positive(raw, "workers", "drills", 2),
    )


def _archive(raw: dict[str, Any]) -> ArchivePolicy:
    targets = raw.get("targets", ["primary", "secondary", "offsite"])
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError("Backup policy field 'archive.targets' must list target names", fix="e.g. [primary, offsite]")
    classes = _mapping(raw.get("storage_class"), "archive.storage_class")
    unknown = sorted(set(classes) - set(targets))
    if unknown:
        raise ConfigError(
            f"archive.storage_class names {unknown}, which are not archive targets", fix="list them in archive.targets"
        )
    r = _mapping(raw.get("rule_321"), "archive.rule_321")
    return ArchivePolicy(
        retention_days=_positive(raw, "retention_days", "archive", 365),
        targets=tuple(targets),
        storage_class={k: str(v).upper() for k, v in classes.items()},
        lock=bool(raw.get("lock", True)),
        rule_321=Rule321Policy(
            min_copies=_positive(r, "min_copies", "archive.rule_321", 3),
            min_media=_positive(r, "min_media", "archive.rule_321", 2),
            min_offsite=_positive(r, "min_offsite", "archive.rule_321", 1),
            enforce=bool(r.get("enforce", True)),
        ),
    )


def load_assurance(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> AssurancePolicy:
    """Read and validate the assurance sections of the policy file (the same file ``load_policy`` reads)."""
    raw = read_policy_file(path, env)
    scrub = _mapping(raw.get("scrub"), "scrub")
    return AssurancePolicy(
        alerts=_alerts(_mapping(raw.get("alerts"), "alerts")),
        rpo=_rpo(_mapping(raw.get("rpo"), "rpo")),
        drills=_drills(_mapping(raw.get("drills"), "drills")),
        archive=_archive(_mapping(raw.get("archive"), "archive")),
        scrub=ScrubPolicy(
            cycle_days=_positive(scrub, "cycle_days", "scrub", 7),
            daily_budget_mb=_positive(scrub, "daily_budget_mb", "scrub", 10240),
        ),
    )
