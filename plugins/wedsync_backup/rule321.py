"""The 3-2-1 rule: at least three copies, on at least two media, at least one offsite."""

from __future__ import annotations

from dataclasses import dataclass, field

from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import Policy


@dataclass
class Rule321Verdict:
    compliant: bool
    copies: int
    media: list[str]
    offsite: list[str]
    problems: list[str] = field(default_factory=list)
    enforced: bool = True

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def check_321(policy: Policy) -> Rule321Verdict:
    """Judge the policy's targets; a target on another site than the source counts as offsite."""
    r = policy.rule_321
    media = sorted({t.medium for t in policy.targets})
    offsite = [t.name for t in policy.targets if t.site != policy.source_site]
    problems = []
    if len(policy.targets) < r.min_copies:
        problems.append(f"{len(policy.targets)} copies, the rule needs {r.min_copies}")
    if len(media) < r.min_media:
        problems.append(f"{len(media)} media ({', '.join(media)}), the rule needs {r.min_media}")
    if len(offsite) < r.min_offsite:
        problems.append(f"{len(offsite)} offsite copies, the rule needs {r.min_offsite}")
    return Rule321Verdict(not problems, len(policy.targets), media, offsite, problems, r.enforce)


def enforce_321(verdict: Rule321Verdict) -> list[str]:
    """Raise if the set-up is non-compliant and the policy enforces the rule; else return warnings."""
    if verdict.compliant:
        return []
    text = "; ".join(verdict.problems)
    if verdict.enforced:
        raise ConfigError(
            "The backup targets break the 3-2-1 rule",
            text,
            "add or fix targets in include/config/backup_policy.yaml, or set rule_321.enforce: false "
            "to run anyway with a recorded warning",
        )
    return [f"3-2-1 rule NOT met ({text}); running because rule_321.enforce is false"]
