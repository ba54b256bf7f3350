"""Wedding phases from the date in the platform's zone, and the settings the proximity tier accepts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from wedsync_backup.catalog import Catalog
from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import load_policy
from wedsync_backup.weddings.phases import frequency_minutes, local_today, phase_of
from wedsync_backup.weddings.settings import save_settings

TODAY = date(2026, 6, 10)


@pytest.mark.parametrize(
    ("days", "phase"),
    [(31, "planning"), (30, "preparation"), (2, "preparation"), (1, "execution"), (0, "execution"),
     (-1, "post_event")],
)  # fmt: skip
def test_phase_of(days: int, phase: str) -> None:
    assert phase_of(TODAY + timedelta(days=days), TODAY) == phase


def test_today_is_the_platforms_date_and_the_wedding_day_pace() -> None:
    wp = load_policy(env={}).weddings
    assert local_today(wp, datetime(2026, 6, 9, 23, 30, tzinfo=UTC)) == TODAY  # 00:30 in London (BST)
    assert frequency_minutes(wp, "execution") == 5 and frequency_minutes(wp, "preparation") == 15
    assert frequency_minutes(wp, "preparation", 60) == 60 and frequency_minutes(wp, "execution", 60) == 5


def test_settings_that_break_321_are_refused_or_recorded(module_catalog: Catalog) -> None:
    policy = load_policy(env={})
    now = datetime(2026, 6, 10, 12, tzinfo=UTC)
    near, far = TODAY + timedelta(days=10), TODAY + timedelta(days=90)
    with pytest.raises(ConfigError, match="too often"):
        save_settings(module_catalog, policy, "w1", wedding_date=far, actor="t", now=now, frequency_minutes=5)
    with pytest.raises(ConfigError, match="break the 3-2-1 rule"):
        save_settings(module_catalog, policy, "w1", wedding_date=far, actor="t", now=now, targets=["primary"])
    with pytest.raises(ConfigError, match="needs an offsite copy"):  # 10 days out: offsite required
        save_settings(
            module_catalog, replace(policy, rule_321=replace(policy.rule_321, min_copies=1, min_media=1,
            min_offsite=0)), "w1", wedding_date=near, actor="t", now=now, targets=["primary"],
        )  # fmt: skip
    assert module_catalog.wedding_settings() == []  # nothing written
    lax = replace(policy, rule_321=replace(policy.rule_321, enforce=False))
    verdict = save_settings(
        module_catalog, lax, "w1", wedding_date=far, actor="t", now=now, targets=["primary"],
        retention_policy="permanent", frequency_minutes=30,
    )  # fmt: skip
    assert verdict.warning and "3-2-1 rule NOT met" in verdict.warning
    (row,) = module_catalog.wedding_settings()
    assert row["rule_321_warning"] == verdict.warning and row["targets"] == ["primary"]
    assert row["retention_policy"] == "permanent" and row["frequency_minutes"] == 30
