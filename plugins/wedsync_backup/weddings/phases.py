"""Wedding phases: where a wedding is in its life, from its date, in the platform's time zone.

planning (more than 30 days away), preparation (2-30 days), execution (the day before and the day itself),
post_event (after it). The phase drives the tier's defaults: how often the wedding is backed up, how long its
backups are kept, and whether an offsite copy is required (from 30 days out).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from wedsync_backup.weddings.policy import WeddingsPolicy

PHASES = ("planning", "preparation", "execution", "post_event")
PREPARATION_DAYS = 30


@dataclass(frozen=True)
class PhaseDefaults:
    retention_policy: str  # minimal | standard | extended | permanent
    offsite_required: bool
    wedding_day: bool  # backed up every wedding_day_rpo_minutes


DEFAULTS = {
    "planning": PhaseDefaults("standard", offsite_required=False, wedding_day=False),
    "preparation": PhaseDefaults("standard", offsite_required=True, wedding_day=False),
    "execution": PhaseDefaults("extended", offsite_required=True, wedding_day=True),
    "post_event": PhaseDefaults("extended", offsite_required=True, wedding_day=False),
}


def local_today(policy: WeddingsPolicy, now: datetime) -> date:
    """The platform's date at ``now`` (an aware instant): a wedding date has no zone, the platform's applies."""
    return now.astimezone(policy.zone).date()


def phase_of(wedding_date: date, today: date) -> str:
    days = (wedding_date - today).days
    if days < 0:
        return "post_event"
    if days <= 1:
        return "execution"
    if days <= PREPARATION_DAYS:
        return "preparation"
    return "planning"


def frequency_minutes(policy: WeddingsPolicy, phase: str, override: int | None = None) -> int:
    """How often a wedding that is due at all is backed up: its day at the wedding-day RPO, else the
    settings row's frequency, else the policy's."""
    if DEFAULTS[phase].wedding_day:
        return min(policy.wedding_day_rpo_minutes, override or policy.wedding_day_rpo_minutes)
    return override or policy.frequency_minutes
