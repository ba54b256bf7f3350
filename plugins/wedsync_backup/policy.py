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
from wedsync_backup.weddings.policy import WeddingsPolicy, parse_weddings_policy

DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[2] / "include" / "config" / "backup_policy.yaml"
POLICY_ENV = "WEDSYNC_BACKUP_POLICY"
# zstd level 1 compresses COPY text about twice as fast as level 3 to the same size (bench/RESULTS.md,
# "Compression level"): the export is CPU-bound, so the faster level makes the whole backup faster.
DEFAULT_ZSTD_LEVEL = 1
TARGET_KINDS = ("local", "s3", "gcs")
# What a target is for. One primary (the export writes there; replicas are copied from it); every other
# target is a replica, secondary (same site as the source) or offsite (another site). The catalog's
# primary/secondary/offsite location columns are filled by role; every target gets a backup_replicas row.
TARGET_ROLES = ("primary", "secondary", "offsite")
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
    role: str = "secondary"


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
class IncrementalPolicy:
    enabled: bool = True
    max_retained_wal_mb: int = 10240
    drop_slot_over_threshold: bool = False
    method: str = "auto"  # auto (logical decoding when the source can), logical, watermark
    fallback: str = "none"  # with auto and no logical decoding: none (full backups only) or updated_at
    watermark_column: str = "updated_at"

    def mode(self, logical_unavailable: str | None) -> str:
        """logical, watermark or none for a source whose logical decoding is (un)available."""
        if not self.enabled:
            return "none"
        if self.method == "watermark":
            return "watermark"
        if logical_unavailable is None:
            return "logical"
        if self.method == "auto" and self.fallback == "updated_at":
            return "watermark"
        return "none"


@dataclass(frozen=True)
class FilesPolicy:
    """The platform's files bucket (photos, documents) and the table that describes its objects.

    ``bucket`` empty: the files component is off (every backup logs it loudly); set it, or WEDSYNC_FILES_BUCKET.
    """

    conn_id: str = "wedsync_files"
    bucket: str | None = None
    prefix: str = ""
    site: str = ""
    table: str = "public.files"
    path_column: str = "storage_path"
    checksum_column: str = "checksum"
    size_column: str = "size_bytes"
    wedding_column: str = "wedding_id"
    workers: int = 4  # objects read, stored and verified at once

    @property
    def enabled(self) -> bool:
        return bool(self.bucket)

    def source_target(self) -> TargetPolicy:
        """The files bucket as a storage (read through the same S3 storage and hook as the targets)."""
        return TargetPolicy("files-source", "s3", self.conn_id, "object-storage", self.site, self.bucket, self.prefix)


FILES_BUCKET_ENV = "WEDSYNC_FILES_BUCKET"


def _files(raw: dict[str, Any], env: dict[str, str], site: str) -> FilesPolicy:
    f = _section(raw, "files")
    names = {
        k: str(f.get(k) or getattr(FilesPolicy, k))
        for k in ("table", "path_column", "checksum_column", "size_column", "wedding_column", "conn_id")
    }
    return FilesPolicy(
        bucket=env.get(FILES_BUCKET_ENV) or f.get("bucket") or None,
        prefix=str(f.get("prefix") or "").strip("/"),
        site=str(f.get("site") or site),
        workers=max(1, _int(f, "workers", "files", 4)),
        **names,
    )


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
    incremental: IncrementalPolicy = field(default_factory=IncrementalPolicy)
    weddings: WeddingsPolicy = field(default_factory=WeddingsPolicy)
    files: FilesPolicy = field(default_factory=FilesPolicy)

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
        """The target the export writes to (the policy's targets list it first)."""
        return self.targets[0]

    @property
    def replicas(self) -> tuple[TargetPolicy, ...]:
        """Every target copied from the primary, in policy order."""
        return self.targets[1:]

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    def roles(self) -> dict[str, str]:
        """Target name -> role."""
        return {t.name: t.role for t in self.targets}

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


def _int(d: dict[str, Any], key: str, where: str, default: int) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"Backup policy field '{where}.{key}' must be a whole number", f"it is {value!r}", "fix it in the policy"
        )
    return value


def _choice(d: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = d.get(key, default)
    if value not in allowed:
        raise ConfigError(
            f"Backup policy field 'incremental.{key}' is {value!r}", fix=f"use one of {', '.join(allowed)}"
        )
    return str(value)


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"Backup policy section '{key}' must be a mapping", f"it is {value!r}", "fix the policy")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"Backup policy field '{where}' must be a list of names",
            f"it is {value!r}",
            f"write it as a YAML list, e.g. {where.rsplit('.', 1)[-1]}: [users, suppliers]",
        )
    return tuple(value)


def _role(name: str, t: dict[str, Any], source_site: str) -> str:
    """A target's role: as set, else its name when that is a role, else offsite unless on the source's site."""
    role = t.get("role") or (name if name in TARGET_ROLES else None)
    if role is None:
        role = "secondary" if str(t.get("site")) == source_site else "offsite"
    if role not in TARGET_ROLES:
        raise ConfigError(
            f"Backup target '{name}' has unknown role '{role}'", fix=f"use one of {', '.join(TARGET_ROLES)}"
        )
    return str(role)


def policy_file_path(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Path:
    """The policy file in force: ``path``, else $WEDSYNC_BACKUP_POLICY, else the shipped one."""
    env = dict(os.environ if env is None else env)
    return Path(path or env.get(POLICY_ENV) or DEFAULT_POLICY_PATH)


def read_policy_file(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The policy file's raw mapping (``path``, else $WEDSYNC_BACKUP_POLICY, else the shipped one)."""
    p = policy_file_path(path, env)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"Backup policy file {p} not found", fix=f"create it or set {POLICY_ENV}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"Backup policy file {p} is not valid YAML", str(e), "fix the syntax") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"Backup policy file {p} is not a mapping", fix="see include/config/backup_policy.yaml")
    return raw


def load_policy(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Policy:
    """Read and validate the policy; bucket names may be overridden by environment variables."""
    env = dict(os.environ if env is None else env)
    raw = read_policy_file(path, env)
    source = _section(raw, "source")
    targets_raw = _section(raw, "targets")
    if not targets_raw:
        raise ConfigError("Backup policy defines no targets", fix="add targets.primary at least")
    targets = []
    for name, t in targets_raw.items():
        if not isinstance(t, dict):
            raise ConfigError(
                f"Backup policy field 'targets.{name}' must be a mapping", f"it is {t!r}", "fix the policy"
            )
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
                role=_role(name, t, str(source.get("site", ""))),
            )
        )
    primaries = [t for t in targets if t.role == "primary"]
    if len(primaries) != 1:
        raise ConfigError(
            f"Backup policy has {len(primaries)} primary targets ({', '.join(t.name for t in primaries) or 'none'})",
            "exactly one target is the primary: the export writes there and the replicas are copied from it",
            "set role: primary on exactly one target (a target named 'primary' is the primary by default)",
        )
    targets = primaries + [t for t in targets if t.role != "primary"]
    prio = {g: _names(v, f"priorities.{g}") for g, v in _section(raw, "priorities").items()}
    unknown = set(prio) - set(PRIORITY_GROUPS)
    if unknown:
        raise ConfigError(f"Backup policy has unknown priority groups {sorted(unknown)}", fix="use critical and high")
    r = _section(raw, "rule_321")
    tiers = {}
    for name, t in _section(raw, "tiers").items():
        if not isinstance(t, dict):
            raise ConfigError(f"Backup policy tier '{name}' must be a mapping", f"it is {t!r}", "fix the policy")
        tiers[name] = TierPolicy(
            schedule=t.get("schedule"), retention_days=_int(t, "retention_days", f"tiers.{name}", 30)
        )
    workers = _int(_section(raw, "export"), "workers", "export", 2)
    if workers < 1:
        raise ConfigError("export.workers must be at least 1", fix="set export.workers to 1 or more")
    return Policy(
        source_conn_id=_require(source, "conn_id", "source"),
        source_site=str(source.get("site", "")),
        exclude_schemas=_names(source.get("exclude_schemas"), "source.exclude_schemas"),
        catalog_conn_id=_require(_section(raw, "catalog"), "conn_id", "catalog"),
        encryption_conn_id=_require(_section(raw, "encryption"), "conn_id", "encryption"),
        zstd_level=_int(_section(raw, "compression"), "zstd_level", "compression", DEFAULT_ZSTD_LEVEL),
        export_workers=workers,
        priorities=prio,
        targets=tuple(targets),
        rule_321=Rule321Policy(
            min_copies=_int(r, "min_copies", "rule_321", 3),
            min_media=_int(r, "min_media", "rule_321", 2),
            min_offsite=_int(r, "min_offsite", "rule_321", 1),
            enforce=bool(r.get("enforce", True)),
        ),
        tiers=tiers,
        incremental=IncrementalPolicy(
            enabled=bool(_section(raw, "incremental").get("enabled", True)),
            max_retained_wal_mb=_int(_section(raw, "incremental"), "max_retained_wal_mb", "incremental", 10240),
            drop_slot_over_threshold=bool(_section(raw, "incremental").get("drop_slot_over_threshold", False)),
            method=_choice(_section(raw, "incremental"), "method", ("auto", "logical", "watermark"), "auto"),
            fallback=_choice(_section(raw, "incremental"), "fallback", ("none", "updated_at"), "none"),
            watermark_column=str(_section(raw, "incremental").get("watermark_column", "updated_at")),
        ),
        weddings=parse_weddings_policy(raw.get("weddings")),
        files=_files(raw, env, str(source.get("site", ""))),
    )
