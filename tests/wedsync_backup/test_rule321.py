"""The 3-2-1 rule on the policy: compliant by default, a short set-up refused or warned about."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import DEFAULT_POLICY_PATH, Policy, load_policy
from wedsync_backup.rule321 import check_321, enforce_321

DEFAULT = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())


def policy(tmp_path: Path, edit: Any) -> Policy:
    raw = copy.deepcopy(DEFAULT)
    edit(raw)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_policy(path, env={})


def two_local_targets(raw: dict[str, Any], enforce: bool = True) -> None:
    """Primary plus one more disk in the same data centre: 2 copies, 1 medium, nothing offsite."""
    raw["targets"] = {
        "primary": raw["targets"]["primary"],
        "second_disk": {"kind": "local", "conn_id": "backup_disk2", "medium": "disk", "site": "dc-primary"},
    }
    raw["rule_321"]["enforce"] = enforce


def test_the_default_policy_complies() -> None:
    v = check_321(load_policy(env={}))
    assert v.compliant and v.problems == []
    assert v.copies == 3
    assert v.media == ["disk", "object-storage"]
    assert v.offsite == ["secondary", "offsite"]
    assert enforce_321(v) == []
    assert v.as_dict()["compliant"] is True


def test_two_targets_on_one_medium_onsite_fail_with_every_problem(tmp_path: Path) -> None:
    v = check_321(policy(tmp_path, two_local_targets))
    assert not v.compliant and v.enforced
    assert v.copies == 2 and v.media == ["disk"] and v.offsite == []
    assert v.problems == [
        "2 copies, the rule needs 3",
        "1 media (disk), the rule needs 2",
        "0 offsite copies, the rule needs 1",
    ]
    with pytest.raises(ConfigError, match="3-2-1") as e:
        enforce_321(v)
    for problem in v.problems:
        assert problem in str(e.value)
    assert "enforce: false" in e.value.fix


def test_not_enforced_gives_a_warning_instead(tmp_path: Path) -> None:
    v = check_321(policy(tmp_path, lambda r: two_local_targets(r, enforce=False)))
    assert not v.compliant and not v.enforced
    warnings = enforce_321(v)
    assert len(warnings) == 1
    assert "NOT met" in warnings[0] and "2 copies, the rule needs 3" in warnings[0]


def test_offsite_means_another_site_than_the_source(tmp_path: Path) -> None:
    def all_at_home(raw: dict[str, Any]) -> None:
        for t in raw["targets"].values():
            t["site"] = raw["source"]["site"]

    v = check_321(policy(tmp_path, all_at_home))
    assert v.problems == ["0 offsite copies, the rule needs 1"]

    def relaxed(raw: dict[str, Any]) -> None:
        two_local_targets(raw)
        raw["rule_321"].update(min_copies=2, min_media=1, min_offsite=0)

    assert check_321(policy(tmp_path, relaxed)).compliant
