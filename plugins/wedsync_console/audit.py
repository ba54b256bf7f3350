"""The audit trail and the rate limits of console actions, both kept in the catalog's ``audit_log``.

Every POST writes one entry, allowed or refused: who, from where, what, with which parameters (secrets
removed) and the outcome. The rate limits count a user's accepted actions of the last hour in the same table,
so every api-server worker sees the same counts. A reservation is taken under an advisory lock per user and
action, so two requests at once cannot both slip under the limit; an action whose trigger then fails appends
a ``failed`` entry pointing at its reservation, which no longer counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

WINDOW = timedelta(hours=1)
SECRET_WORDS = ("password", "secret", "token", "key", "credential")
ACTION_PREFIX = "console."


def scrub(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters fit for the log: any field whose name suggests a secret is masked."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if any(w in k.lower() for w in SECRET_WORDS) and not k.lower().endswith(("_id", "_ids")):
            out[k] = "***"
        elif isinstance(v, dict):
            out[k] = scrub(v)
        else:
            out[k] = v
    return out


@dataclass(frozen=True)
class Refusal:
    """A rate limit reached: how many were allowed, and when the next one will be."""

    limit: int
    retry_after: int

    def message(self, action: str) -> str:
        return (
            f"Rate limit reached: at most {self.limit} {action} per hour per user. "
            f"Try again in {self.retry_after} s (or ask another administrator)"
        )


def write(
    dsn: str,
    *,
    actor: str,
    action: str,
    client: str | None,
    params: dict[str, Any],
    outcome: str,
    status_code: int,
    message: str | None = None,
    backup_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Append one entry; returns its id."""
    details = {
        "client": client,
        "params": scrub(params),
        "outcome": outcome,
        "status_code": status_code,
        "message": message,
        **(extra or {}),
    }
    with psycopg.connect(dsn, row_factory=dict_row, application_name="wedsync_console") as conn:
        return conn.execute(
            "INSERT INTO audit_log (actor, action, backup_id, details) VALUES (%s, %s, %s, %s) RETURNING id",
            (actor, ACTION_PREFIX + action, backup_id, Jsonb(details)),
        ).fetchone()["id"]


def reserve(
    dsn: str,
    *,
    actor: str,
    action: str,
    limit: int,
    client: str | None,
    params: dict[str, Any],
    now: datetime | None = None,
) -> int | Refusal:
    """Take one of ``limit`` slots of the last hour (an ``accepted`` entry), or say when one frees up."""
    now = now or datetime.now(UTC)
    name = ACTION_PREFIX + action
    with psycopg.connect(dsn, row_factory=dict_row, application_name="wedsync_console") as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{name}|{actor}",))
        used = conn.execute(
            """
            SELECT a.at FROM audit_log a
            WHERE a.actor = %(actor)s AND a.action = %(action)s AND a.at > %(since)s
              AND a.details->>'outcome' = 'accepted'
              AND NOT EXISTS (SELECT 1 FROM audit_log f WHERE f.actor = a.actor AND f.action = a.action
                              AND f.at >= a.at AND f.details->>'reservation' = a.id::text
                              AND f.details->>'outcome' = 'failed')
            ORDER BY a.at
            """,
            {"actor": actor, "action": name, "since": now - WINDOW},
        ).fetchall()
        if len(used) >= limit:
            oldest = used[len(used) - limit]["at"]
            return Refusal(limit, max(1, math.ceil((oldest + WINDOW - now).total_seconds())))
        details = {"client": client, "params": scrub(params), "outcome": "accepted", "status_code": 202}
        return conn.execute(
            "INSERT INTO audit_log (actor, action, details) VALUES (%s, %s, %s) RETURNING id",
            (actor, name, Jsonb(details)),
        ).fetchone()["id"]
