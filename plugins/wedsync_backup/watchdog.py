"""The RPO watchdog: is each tier's newest verified recovery point younger than its objective?

A breach is recorded in ``rpo_breaches`` and alerted once, when it opens; while it lasts, later checks
only update its worst age; when a new point ends it, the end is recorded and announced. Two checks running
at once cannot alert twice: at most one breach per tier is open (a unique index), and opening or closing it
is one statement whose result says who did it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from wedsync_backup import alerts
from wedsync_backup.alerts import Alert
from wedsync_backup.catalog import Catalog
from wedsync_backup.weddings.policy import WeddingsPolicy

log = logging.getLogger(__name__)

# The backup types that give a tier its recovery points, and the DAG that makes them.
TIER_TYPES = {
    "incremental": ("incremental", "full", "manual", "archive"),  # any point counts for point-in-time recovery
    "full": ("full", "manual"),
    "archive": ("archive",),
}
TIER_DAGS = {
    "incremental": "backup_hourly_incremental",
    "full": "backup_daily_full",
    "archive": "backup_weekly_archive",
    "wedding_day": "backup_wedding_proximity",  # tiers wedding_day:<wedding id> (weddings/watch.py)
    "wedding": "backup_wedding_proximity",  # tiers wedding:<wedding id>, due before their day
}


def human(delta: timedelta) -> str:
    """``3 d 4 h``, ``1 h 5 min``, ``12 min``: what a person reads at 3 a.m."""
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{mins} min" if mins and not days else ""]
    return " ".join(p for p in parts if p) or "under a minute"


@dataclass
class TierState:
    tier: str
    objective: timedelta
    newest_backup_id: str | None
    newest_point_at: datetime | None
    age: timedelta | None  # None: the tier has no verified point at all

    @property
    def breached(self) -> bool:
        return self.age is None or self.age > self.objective

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "objective": human(self.objective),
            "newest_backup_id": self.newest_backup_id,
            "newest_point_at": self.newest_point_at.isoformat() if self.newest_point_at else None,
            "age": human(self.age) if self.age is not None else None,
            "breached": self.breached,
        }


@dataclass
class WatchdogResult:
    states: list[TierState]
    opened: list[str] = field(default_factory=list)  # tiers whose breach this check opened (and alerted)
    ongoing: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # tiers whose breach this check ended (and announced)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tiers": [s.as_dict() for s in self.states],
            "opened": self.opened,
            "ongoing": self.ongoing,
            "closed": self.closed,
        }


def tier_states(cat: Catalog, objectives: dict[str, timedelta], now: datetime) -> list[TierState]:
    """Each watched tier's newest verified, unpruned, undamaged recovery point and its age at ``now``."""
    out = []
    with cat.connect() as conn:
        for tier, objective in objectives.items():
            row = conn.execute(
                "SELECT b.backup_id, r.recovery_timestamp FROM recovery_points r JOIN backup_operations b"
                " USING (backup_id) WHERE b.status = 'completed' AND b.integrity_verified AND b.pruned_at IS NULL"
                " AND b.backup_type = ANY(%s) ORDER BY r.recovery_timestamp DESC LIMIT 1",
                (list(TIER_TYPES.get(tier, (tier,))),),
            ).fetchone()
            at = row["recovery_timestamp"] if row else None
            out.append(TierState(tier, objective, row["backup_id"] if row else None, at, (now - at) if at else None))
    return out


def _open(cat: Catalog, s: TierState, now: datetime) -> bool:
    """Open the tier's breach (True), or, when one is open already, only note its worst age (False)."""
    with cat.connect() as conn:
        row = conn.execute(
            """
            INSERT INTO rpo_breaches AS b (tier, objective, started_at, newest_backup_id, newest_point_at, worst_age)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (tier) WHERE ended_at IS NULL DO UPDATE
                SET worst_age = GREATEST(b.worst_age, EXCLUDED.worst_age)
            RETURNING (xmax = 0) AS inserted
            """,
            (s.tier, s.objective, now, s.newest_backup_id, s.newest_point_at, s.age),
        ).fetchone()
    return bool(row and row["inserted"])


def _close(cat: Catalog, s: TierState, now: datetime) -> dict[str, Any] | None:
    with cat.connect() as conn:
        return conn.execute(
            "UPDATE rpo_breaches SET ended_at = %s, recovered_backup_id = %s"
            " WHERE tier = %s AND ended_at IS NULL RETURNING *",
            (now, s.newest_backup_id, s.tier),
        ).fetchone()


def _mark(cat: Catalog, tier: str, column: str, now: datetime) -> None:
    with cat.connect() as conn:
        conn.execute(
            f"UPDATE rpo_breaches SET {column} = %s WHERE id = (SELECT max(id) FROM rpo_breaches WHERE tier = %s)",
            (now, tier),
        )


def run_watchdog(
    cat: Catalog,
    objectives: dict[str, timedelta],
    now: datetime,
    *,
    notify: Callable[[Alert], object],
    weddings: WeddingsPolicy | None = None,
) -> WatchdogResult:
    """Check every tier (and, with ``weddings``, every wedding on its day); alert a breach once when it
    opens, and announce its end."""
    states = tier_states(cat, objectives, now)
    if weddings is not None:
        from wedsync_backup.weddings.watch import wedding_day_states  # (it imports this module)

        states += wedding_day_states(cat, weddings, now)
    result = WatchdogResult(states)
    for s in result.states:
        if s.breached:
            if not _open(cat, s, now):
                result.ongoing.append(s.tier)
                continue
            log.error("!!! RPO breach: %s", s.as_dict())
            notify(
                alerts.rpo_breach(
                    tier=s.tier,
                    objective=human(s.objective),
                    age=human(s.age) if s.age is not None else None,
                    newest_backup_id=s.newest_backup_id,
                    dag=TIER_DAGS.get(s.tier.split(":")[0], "the tier's backup DAG"),
                )
            )
            _mark(cat, s.tier, "alerted_at", now)
            result.opened.append(s.tier)
        else:
            breach = _close(cat, s, now)
            if breach is None:
                continue
            assert s.age is not None and s.newest_backup_id is not None
            log.warning("RPO breach of the %s tier is over: %s", s.tier, s.as_dict())
            notify(
                alerts.rpo_recovered(
                    tier=s.tier,
                    objective=human(s.objective),
                    age=human(s.age),
                    backup_id=s.newest_backup_id,
                    lasted=human(now - breach["started_at"]),
                )
            )
            _mark(cat, s.tier, "end_alerted_at", now)
            result.closed.append(s.tier)
    return result


def breach_history(cat: Catalog, tier: str | None = None) -> list[dict[str, Any]]:
    with cat.connect() as conn:
        return conn.execute(
            "SELECT * FROM rpo_breaches WHERE %(t)s::text IS NULL OR tier = %(t)s ORDER BY started_at, id",
            {"t": tier},
        ).fetchall()
