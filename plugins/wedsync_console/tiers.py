"""The backup tiers the console watches, and how healthy each is against its recovery point objective."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Tier:
    name: str
    title: str
    dag_id: str
    backup_types: tuple[str, ...]  # the backups whose points serve this tier
    rpo: timedelta


TIERS = (
    Tier("full", "Daily full", "backup_daily_full", ("full", "manual"), timedelta(hours=24)),
    Tier("incremental", "Hourly incremental", "backup_hourly_incremental", ("full", "incremental"), timedelta(hours=1)),
    Tier("archive", "Weekly offsite archive", "backup_weekly_archive", ("archive",), timedelta(days=7)),
    Tier("wedding", "Wedding proximity", "backup_wedding_proximity", ("wedding",), timedelta(minutes=15)),
)
RESTORE_DAG = "emergency_restore"
DRILL_DAG = "restore_drill"
WEDDING_NOW_DAG = "backup_wedding_now"
WATCHED_DAGS = (*(t.dag_id for t in TIERS), RESTORE_DAG, DRILL_DAG, WEDDING_NOW_DAG)


def age_in_words(seconds: float) -> str:
    """ "3 d 4 h", "2 h 5 min", "12 min", "40 s": the largest two units."""
    s = int(max(0, seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def health(age: timedelta | None, rpo: timedelta) -> tuple[str, str]:
    """(level, words): ok within the RPO, warning up to twice it, critical beyond or with no point at all."""
    if age is None:
        return "critical", "no verified backup yet"
    if age <= rpo:
        return "ok", f"within RPO ({age_in_words(rpo.total_seconds())})"
    if age <= 2 * rpo:
        return "warning", f"RPO of {age_in_words(rpo.total_seconds())} exceeded"
    return "critical", f"RPO of {age_in_words(rpo.total_seconds())} exceeded more than twice"


def tier_status(tier: Tier, point: dict[str, Any] | None, dag: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """One tier card: last run, newest verified point, its age against the RPO, the next run."""
    out: dict[str, Any] = {
        "tier": tier.name,
        "title": tier.title,
        "dag_id": tier.dag_id,
        "rpo_seconds": int(tier.rpo.total_seconds()),
        "rpo_text": age_in_words(tier.rpo.total_seconds()),
        "deployed": dag is not None,
        "newest_point": point,
        "last_run": dag and dag["last_run"],
        "next_run": dag and dag["next_run"],
        "paused": bool(dag and dag["paused"]),
    }
    if dag is None and point is None:
        out.update(health="not_deployed", health_text=f"not deployed ({tier.dag_id} is not in this Airflow)")
        out.update(age_seconds=None, age_text=None)
        return out
    age = now - point["at"] if point and point.get("at") else None
    level, words = health(age, tier.rpo)
    if out["paused"]:
        words += "; the DAG is paused"
    out.update(health=level, health_text=words)
    out.update(
        age_seconds=round(age.total_seconds()) if age else None,
        age_text=f"{age_in_words(age.total_seconds())} ago" if age else None,
    )
    return out
