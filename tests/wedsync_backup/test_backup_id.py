"""Backup ids are made and parsed in one place."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from wedsync_backup.backup_id import backup_age_hours, make_backup_id, parse_backup_id

AT = datetime(2026, 11, 29, 2, 0, 5, tzinfo=UTC)


def test_made_then_parsed() -> None:
    bid = make_backup_id("full", "backup_daily_full|scheduled__2026-11-29", AT)
    assert bid.startswith("full-20261129T020005Z-") and len(bid) == len("full-20261129T020005Z-") + 8
    parts = parse_backup_id(bid)
    assert parts is not None and parts.backup_type == "full" and parts.due_at == AT
    # stable per run, whatever zone the due time is given in; another run gets another id
    assert (
        make_backup_id("full", "backup_daily_full|scheduled__2026-11-29", AT.astimezone(timezone(timedelta(hours=2))))
        == bid
    )
    assert make_backup_id("full", "backup_daily_full|manual__x", AT) != bid


def test_age_and_foreign_ids() -> None:
    bid = make_backup_id("incremental", "d|r", AT)
    assert backup_age_hours(bid, AT + timedelta(hours=49)) == 49
    for foreign in ("full-1", "crashed", "full-2026-03-01", "full-20261129T020005Z-XYZ"):
        assert parse_backup_id(foreign) is None and backup_age_hours(foreign, AT) is None
