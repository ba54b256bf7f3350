"""Backup ids: made and parsed here only.

A backup id is ``<type>-<YYYYmmddTHHMMSSZ>-<8 hex>``: the type, the moment the run was due (UTC) and a digest
of the run that made it. It is stable per run, so every retry of every task works on the same backup, and
it sorts by time within a type. Ids written by hand (tests, older tools) may not follow the format:
``parse_backup_id`` returns None for them and callers treat their age as unknown.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_ID = re.compile(r"^(?P<type>[a-z][a-z_]*)-(?P<stamp>\d{8}T\d{6}Z)-(?P<digest>[0-9a-f]{8})$")


@dataclass(frozen=True)
class BackupIdParts:
    backup_type: str
    due_at: datetime
    digest: str


def make_backup_id(backup_type: str, run_key: str, due_at: datetime) -> str:
    """The id of the backup that the run ``run_key`` (e.g. ``dag_id|run_id``) due at ``due_at`` makes."""
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:8]
    return f"{backup_type}-{due_at.astimezone(UTC):{STAMP_FORMAT}}-{digest}"


def parse_backup_id(backup_id: str) -> BackupIdParts | None:
    """The parts of an id made by ``make_backup_id``; None for an id of any other shape."""
    m = _ID.match(backup_id)
    if not m:
        return None
    at = datetime.strptime(m["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
    return BackupIdParts(m["type"], at, m["digest"])


def backup_age_hours(backup_id: str, now: datetime) -> float | None:
    """How long ago the backup's run was due, in hours (None when the id carries no time)."""
    parts = parse_backup_id(backup_id)
    return None if parts is None else (now - parts.due_at).total_seconds() / 3600
