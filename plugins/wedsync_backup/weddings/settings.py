"""Saving a wedding's wedding_backup_settings row: what the policy allows, judged before anything is written.

A row may ask for fewer targets; the 3-2-1 rule is judged on those (and, from 30 days before the wedding, an
offsite copy is required). A row that breaks it is refused while ``rule_321.enforce`` is on; with it off the
row is saved and its warning recorded (``rule_321_warning``, and an audit entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime

from wedsync_backup.catalog import Catalog
from wedsync_backup.catalog.wedding_backups import SettingsVerdict
from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import Policy
from wedsync_backup.rule321 import check_321
from wedsync_backup.weddings.phases import DEFAULTS, local_today, phase_of


def rule_321_problems(policy: Policy, targets: Sequence[str] | None, wedding_date: date, now: datetime) -> list[str]:
    """What breaks the 3-2-1 rule (or the offsite requirement of the wedding's phase) with only ``targets``."""
    if not targets:
        return []
    unknown = [t for t in targets if t not in policy.target_names]
    if unknown:
        raise ConfigError(
            f"Unknown backup target(s) {', '.join(unknown)} in the wedding's settings",
            fix=f"use the policy's targets: {', '.join(policy.target_names)}",
        )
    chosen = replace(policy, targets=tuple(t for t in policy.targets if t.name in targets))
    problems = list(check_321(chosen).problems)
    phase = phase_of(wedding_date, local_today(policy.weddings, now))
    if DEFAULTS[phase].offsite_required and not any(t.site != policy.source_site for t in chosen.targets):
        problems.append(f"the wedding is in its {phase} phase, which needs an offsite copy")
    return problems


def save_settings(
    cat: Catalog,
    policy: Policy,
    wedding_id: str,
    *,
    wedding_date: date,
    actor: str,
    now: datetime,
    targets: Sequence[str] | None = None,
    **overrides: object,
) -> SettingsVerdict:
    """Judge, then save, a wedding's overrides (frequency_minutes, proximity_days, high_priority_from/_until,
    retention_policy, enabled)."""
    return cat.save_wedding_settings(
        wedding_id,
        wedding_date=wedding_date,
        actor=actor,
        rule_321_problems=rule_321_problems(policy, targets, wedding_date, now),
        enforce_321=policy.rule_321.enforce,
        targets=targets,
        **overrides,  # type: ignore[arg-type]
    )
