"""The weddings' RPO, checked by the RPO watchdog: a wedding due in the proximity tier (its date within
``proximity_days``, or its settings row's) must have a verified wedding backup younger than its pace: the
policy's ``frequency_minutes`` (or its settings row's), and on its day and the day before (its execution
phase) ``wedding_day_rpo_minutes``.

Each such wedding is a watchdog tier of its own, ``wedding:<id>`` (``wedding_day:<id>`` in its execution
phase), so its breach is alerted once and its end announced, like any tier. The weddings are the ones the
catalog knows to be due (their wedding backups and wedding_backup_settings rows record the date); once a
wedding is no longer due (or its day is over), a breach still open for it is closed quietly.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from wedsync_backup.catalog import Catalog
from wedsync_backup.watchdog import TierState
from wedsync_backup.weddings.phases import frequency_minutes, local_today, phase_of
from wedsync_backup.weddings.policy import WeddingsPolicy

TIER_PREFIX = "wedding_day:"  # the execution phase (its day and the day before)
DUE_PREFIX = "wedding:"  # due in the proximity tier, before its execution phase


def wedding_day_states(cat: Catalog, policy: WeddingsPolicy, now: datetime) -> list[TierState]:
    today = local_today(policy, now)
    with cat.connect() as conn:
        rows = conn.execute(
            """
            WITH latest AS (  -- each wedding's date as its newest wedding backup recorded it
                SELECT DISTINCT ON (wedding_id) wedding_id, wedding_date FROM wedding_backups
                WHERE wedding_date IS NOT NULL ORDER BY wedding_id, recovery_timestamp DESC
            ), due AS (
                SELECT l.wedding_id, coalesce(s.wedding_date, l.wedding_date) AS wedding_date,
                       s.frequency_minutes AS override
                FROM latest l LEFT JOIN wedding_backup_settings s USING (wedding_id)
                WHERE coalesce(s.enabled, true)
                  AND coalesce(s.wedding_date, l.wedding_date) - %(today)s
                      BETWEEN 0 AND coalesce(s.proximity_days, %(days)s)
                UNION
                SELECT s.wedding_id, s.wedding_date, s.frequency_minutes FROM wedding_backup_settings s
                WHERE s.enabled AND s.wedding_date - %(today)s BETWEEN 0 AND s.proximity_days
            )
            SELECT d.wedding_id, d.wedding_date, d.override, p.backup_id, p.recovery_timestamp
            FROM due d
            LEFT JOIN LATERAL (
                SELECT w.backup_id, w.recovery_timestamp FROM wedding_backups w
                JOIN backup_operations b USING (backup_id)
                WHERE w.wedding_id = d.wedding_id AND b.status = 'completed' AND b.integrity_verified
                  AND b.pruned_at IS NULL
                ORDER BY w.recovery_timestamp DESC LIMIT 1
            ) p ON true
            ORDER BY d.wedding_id
            """,
            {"today": today, "days": policy.proximity_days},
        ).fetchall()
        states = []
        for r in rows:
            phase = phase_of(r["wedding_date"], today)
            prefix = TIER_PREFIX if phase == "execution" else DUE_PREFIX
            states.append(
                TierState(
                    f"{prefix}{r['wedding_id']}",
                    timedelta(minutes=frequency_minutes(policy, phase, r["override"])),
                    r["backup_id"],
                    r["recovery_timestamp"],
                    (now - r["recovery_timestamp"]) if r["recovery_timestamp"] else None,
                )
            )
        conn.execute(  # no longer due (or the day is over): nothing to recover any more
            "UPDATE rpo_breaches SET ended_at = %s WHERE ended_at IS NULL AND (tier LIKE %s OR tier LIKE %s)"
            " AND tier <> ALL(%s)",
            (now, f"{TIER_PREFIX}%", f"{DUE_PREFIX}%", [s.tier for s in states]),
        )
    return states
