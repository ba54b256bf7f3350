"""The backup policy (include/config/backup_policy.yaml), parsed and validated once.

Environment variables override bucket names so one policy file serves every deployment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wedsync_backup.errors import ConfigError

DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[2] / "include" / "config" / "backup_policy.yaml"
POLICY_ENV = "WEDSYNC_BACKUP_POLICY"
TARGET_KINDS = ("local", "s3", "gcs")
PRIORITY_GROUPS = ("critical", "high", "standard")


@dataclass(frozen=True)
class TargetPolicy:
    name: str
    kind: str
    conn_id: str
    medium: str
    site: str
    bucket: str | None = None
    prefix: str = ""


@dataclass(frozen=True)
class Rule321Policy:
    min_copies: int = 3
    min_media: int = 2
    min_offsite: int = 1
    enforce: bool = True


@dataclass(frozen=True)
class TierPolicy:
    schedule: str | None
    retention_days: int


@dataclass(frozen=True)
class Policy:
    source_conn_id: str
    source_site: str
    exclude_schemas: tuple[str, ...]
    catalog_conn_id: str
    encryption_conn_id: str
    zstd_level: int
    export_workers: int
    priorities: dict[str, tuple[str, ...]]
    targets: tuple[TargetPolicy, ...]
    rule_321: Rule321Policy
    tiers: dict[str, TierPolicy] = field(default_factory=dict)

    def target(self, name: str) -> TargetPolicy:
        for t in self.targets:
            if t.name == name:
                return t
        raise ConfigError(
            f"Unknown backup target '{name}'",
            f"the policy defines {', '.join(t.name for t in self.targets)}",
            "use one of those names",
        )

    @property
    def primary(self) -> TargetPolicy:
        return self.targets[0]

    def priority_of(self, schema: str, table: str) -> str:
        """critical/high/standard; a table nobody listed is standard (lists order, never filter)."""
        for group in ("critical", "high"):
            names = self.priorities.get(group, ())
            if table in names or f"{schema}.{table}" in names:
                return group
        return "standard"


def _require(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] in (None, ""):
        raise ConfigError(f"Backup policy is missing '{where}.{key}'", fix=f"set {where}.{key} in the policy")
    return d[key]


def load_policy(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Policy:
    """Read and validate the policy; bucket names may be overridden by environment variables."""
    env = dict(os.environ if env is None else env)
    p = Path(path or env.get(POLICY_ENV) or DEFAULT_POLICY_PATH)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"Backup policy file {p} not found", fix=f"create it or set {POLICY_ENV}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"Backup policy file {p} is not valid YAML", str(e), "fix the syntax") from e

    source = raw.get("source") or {}
    targets_raw = raw.get("targets") or {}
    if not targets_raw:
        raise ConfigError("Backup policy defines no targets", fix="add targets.primary at least")
    targets = []
    for name, t in targets_raw.items():
        kind = _require(t, "kind", f"targets.{name}")
        if kind not in TARGET_KINDS:
            raise ConfigError(
                f"Backup target '{name}' has unknown kind '{kind}'",
                fix=f"use one of {', '.join(TARGET_KINDS)}",
            )
        bucket = t.get("bucket")
        if t.get("bucket_env") and env.get(t["bucket_env"]):
            bucket = env[t["bucket_env"]]
        if kind in ("s3", "gcs") and not bucket:
            raise ConfigError(
                f"Backup target '{name}' has no bucket",
                fix=f"set targets.{name}.bucket in the policy or {t.get('bucket_env', 'its bucket_env')}",
            )
        targets.append(
            TargetPolicy(
                name=name,
                kind=kind,
                conn_id=_require(t, "conn_id", f"targets.{name}"),
                medium=_require(t, "medium", f"targets.{name}"),
                site=_require(t, "site", f"targets.{name}"),
                bucket=bucket,
                prefix=str(t.get("prefix") or "").strip("/"),
            )
        )
    prio = {g: tuple(v or ()) for g, v in (raw.get("priorities") or {}).items()}
    unknown = set(prio) - set(PRIORITY_GROUPS)
    if unknown:
        raise ConfigError(f"Backup policy has unknown priority groups {sorted(unknown)}", fix="use critical and high")
    r = raw.get("rule_321") or {}
    tiers = {
        name: TierPolicy(schedule=t.get("schedule"), retention_days=int(t.get("retention_days", 30)))
        for name, t in (raw.get("tiers") or {}).items()
    }
    workers = int((raw.get("export") or {}).get("workers", 2))
    if workers < 1:
        raise ConfigError("export.workers must be at least 1", fix="set export.workers to 1 or more")
    return Policy(
        source_conn_id=_require(source, "conn_id", "source"),
        source_site=str(source.get("site", "")),
        exclude_schemas=tuple(source.get("exclude_schemas") or ()),
        catalog_conn_id=_require(raw.get("catalog") or {}, "conn_id", "catalog"),
        encryption_conn_id=_require(raw.get("encryption") or {}, "conn_id", "encryption"),
        zstd_level=int((raw.get("compression") or {}).get("zstd_level", 3)),
        export_workers=workers,
        priorities=prio,
        targets=tuple(targets),
        rule_321=Rule321Policy(
            min_copies=int(r.get("min_copies", 3)),
            min_media=int(r.get("min_media", 2)),
            min_offsite=int(r.get("min_offsite", 1)),
            enforce=bool(r.get("enforce", True)),
        ),
        tiers=tiers,
    )
