"""The wedding-day RPO, checked by the RPO watchdog: a wedding in its execution phase (the day before and the
day itself) must have a verified wedding backup younger than ``weddings.wedding_day_rpo_minutes``.

Each such wedding is a watchdog tier of its own, ``wedding_day:<wedding id>``, so its breach is alerted once
and its end announced, like any tier. The weddings are the ones the catalog knows to be on their day (their
wedding backups and wedding_backup_settings rows record the date); once a wedding's day is over, a breach
still open for it is closed quietly.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from wedsync_backup.catalog import Catalog
from wedsync_backup.watchdog import TierState
from wedsync_backup.weddings.phases import local_today
from wedsync_backup.weddings.policy import WeddingsPolicy

TIER_PREFIX = "wedding_day:"


def wedding_day_states(cat: Catalog, policy: WeddingsPolicy, now: datetime) -> list[TierState]:
    today = local_today(policy, now)
    days = [today, today + timedelta(days=1)]
    objective = timedelta(minutes=policy.wedding_day_rpo_minutes)
    with cat.connect() as conn:
        rows = conn.execute(
            """
            WITH on_their_day AS (
                SELECT wedding_id FROM wedding_backups WHERE wedding_date = ANY(%(days)s)
                UNION SELECT wedding_id FROM wedding_backup_settings WHERE enabled AND wedding_date = ANY(%(days)s)
            )
            SELECT d.wedding_id, p.backup_id, p.recovery_timestamp
            FROM on_their_day d
            LEFT JOIN LATERAL (
                SELECT w.backup_id, w.recovery_timestamp FROM wedding_backups w
                JOIN backup_operations b USING (backup_id)
                WHERE w.wedding_id = d.wedding_id AND b.status = 'completed' AND b.integrity_verified
                  AND b.pruned_at IS NULL
                ORDER BY w.recovery_timestamp DESC LIMIT 1
            ) p ON true
            ORDER BY d.wedding_id
            """,
            {"days": days},
        ).fetchall()
        states = [
            TierState(
                f"{TIER_PREFIX}{r['wedding_id']}",
                objective,
                r["backup_id"],
                r["recovery_timestamp"],
                (now - r["recovery_timestamp"]) if r["recovery_timestamp"] else None,
            )
            for r in rows
        ]
        conn.execute(  # the day is over: nothing to recover any more
            "UPDATE rpo_breaches SET ended_at = %s WHERE ended_at IS NULL AND tier LIKE %s AND tier <> ALL(%s)",
            (now, f"{TIER_PREFIX}%", [s.tier for s in states]),
        )
    return states
