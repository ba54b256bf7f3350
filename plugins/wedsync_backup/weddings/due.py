"""Which weddings a run backs up: by date proximity (read from the SOURCE's wedding table), by their
wedding_backup_settings overrides, and by name (backup_wedding_now), each at its phase's pace."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from psycopg import sql

from wedsync_backup.errors import ConfigError
from wedsync_backup.weddings.phases import DEFAULTS, frequency_minutes, local_today, phase_of
from wedsync_backup.weddings.policy import WeddingsPolicy

# A run a little early (scheduler jitter) still counts a wedding as due.
SLACK = timedelta(minutes=1)


@dataclass(frozen=True)
class DueWedding:
    wedding_id: str
    wedding_date: date | None
    phase: str
    frequency_minutes: int
    retention_policy: str
    why: str  # proximity | wedding_day | settings | high_priority | requested


def _root(policy: WeddingsPolicy) -> sql.Composed:
    return sql.SQL("SELECT {}::text, {}::date FROM {} t").format(
        sql.Identifier("t", policy.key), sql.Identifier("t", policy.date_column), sql.Identifier(*policy.table)
    )


def weddings_by_id(conn: Any, policy: WeddingsPolicy, wedding_ids: Sequence[str]) -> dict[str, date | None]:
    """The named weddings' dates from the source; an id that is not there is refused by name."""
    ids = list(dict.fromkeys(str(w).strip() for w in wedding_ids))
    if not ids or any(not w for w in ids):
        raise ConfigError("No wedding ids given", fix="pass one or more wedding ids (param wedding_ids)")
    query = _root(policy) + sql.SQL(" WHERE {}::text = ANY(%s)").format(sql.Identifier("t", policy.key))
    found = dict(conn.execute(query, (ids,)).fetchall())
    unknown = [w for w in ids if w not in found]
    if unknown:
        raise ConfigError(
            f"Unknown wedding id(s): {', '.join(unknown)}",
            f"{'they are' if len(unknown) > 1 else 'it is'} not in {'.'.join(policy.table)} on the source",
            "check the ids (nothing was backed up)",
        )
    return {w: found[w] for w in ids}


def weddings_near(conn: Any, policy: WeddingsPolicy, today: date, days: int) -> dict[str, date]:
    """Weddings dated from today (the platform's date) to ``days`` ahead."""
    query = _root(policy) + sql.SQL(" WHERE {} BETWEEN %s AND %s").format(sql.Identifier("t", policy.date_column))
    return dict(conn.execute(query, (today, today + timedelta(days=days))).fetchall())


def due_weddings(
    conn: Any,
    policy: WeddingsPolicy,
    settings: Sequence[dict[str, Any]],
    last_backup: dict[str, datetime],
    now: datetime,
    *,
    requested: Sequence[str] = (),
) -> list[DueWedding]:
    """Requested weddings (exactly those, in the order asked); otherwise weddings within their proximity
    window (policy or settings row) or high-priority period whose frequency has passed since their newest
    verified wedding backup."""
    today = local_today(policy, now)
    by_id = {str(s["wedding_id"]): s for s in settings}
    if requested:  # backup_wedding_now: exactly these, whatever their dates
        out = []
        for w, d in weddings_by_id(conn, policy, requested).items():
            phase = phase_of(d, today) if d else "planning"
            out.append(DueWedding(w, d, phase, frequency_minutes(policy, phase), _retention(by_id.get(w), phase),
                                  "requested"))  # fmt: skip
        return out
    widest = max([policy.proximity_days, *(int(s["proximity_days"]) for s in settings if s.get("enabled"))])
    candidates: dict[str, tuple[date | None, str]] = {
        w: (d, "proximity") for w, d in weddings_near(conn, policy, today, widest).items()
    }
    active = [
        str(s["wedding_id"])
        for s in settings
        if s.get("enabled")
        and s.get("high_priority_from")
        and s["high_priority_from"] <= now
        and (s.get("high_priority_until") is None or now < s["high_priority_until"])
    ]
    if active:
        for w, d in weddings_by_id_lenient(conn, policy, active).items():
            candidates[w] = (d, "high_priority")
    out: dict[str, DueWedding] = {}
    for w, (d, why) in candidates.items():
        s = by_id.get(w)
        if s is not None and not s.get("enabled", True):
            continue
        phase = phase_of(d, today) if d else "planning"
        window = int(s["proximity_days"]) if s is not None else policy.proximity_days
        if why == "proximity" and d is not None and (d - today).days > window:
            continue
        if why == "proximity" and DEFAULTS[phase].wedding_day:
            why = "wedding_day"
        elif why == "proximity" and s is not None:
            why = "settings"
        freq = frequency_minutes(policy, phase, int(s["frequency_minutes"]) if s is not None else None)
        last = last_backup.get(w)
        if last is not None and now - last + SLACK < timedelta(minutes=freq):
            continue
        out[w] = DueWedding(w, d, phase, freq, _retention(s, phase), why)
    return sorted(out.values(), key=lambda x: (x.wedding_date or date.max, x.wedding_id))


def weddings_by_id_lenient(conn: Any, policy: WeddingsPolicy, wedding_ids: Sequence[str]) -> dict[str, date | None]:
    """Like weddings_by_id, but a settings row whose wedding is gone from the source is simply not due."""
    query = _root(policy) + sql.SQL(" WHERE {}::text = ANY(%s)").format(sql.Identifier("t", policy.key))
    return dict(conn.execute(query, (list(wedding_ids),)).fetchall())


def _retention(settings: dict[str, Any] | None, phase: str) -> str:
    if settings is not None and settings.get("retention_policy"):
        return str(settings["retention_policy"])
    return DEFAULTS[phase].retention_policy
