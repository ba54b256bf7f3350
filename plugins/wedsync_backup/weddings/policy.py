"""The backup policy's ``weddings`` section: what a wedding is in the source and how often it is backed up.

Names may be quoted like SQL identifiers ('"Wed Data"."Weddings"'); an unqualified table is in ``public``.
Every mistake is a ConfigError naming the key to fix, raised before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from wedsync_backup.errors import ConfigError

RETENTION_POLICIES = ("minimal", "standard", "extended", "permanent")
DEFAULT_RETENTION_DAYS: dict[str, int | None] = {"minimal": 7, "standard": 30, "extended": 365, "permanent": None}
# One identifier: "quoted ""with"" quotes" or bare.
_IDENT = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^".\s]+))\s*')


def split_name(text: str, where: str) -> tuple[str, ...]:
    """A dotted, possibly quoted SQL name -> its parts (bare parts lower-cased, as PostgreSQL folds them)."""
    parts: list[str] = []
    pos = 0
    while True:
        m = _IDENT.match(text, pos)
        if not m or m.end() == pos:
            raise ConfigError(
                f"Backup policy field '{where}' is not a valid name: {text!r}",
                fix='write schema.table (quote names that need it: \'"Wed Data"."Weddings"\')',
            )
        parts.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2).lower())
        pos = m.end()
        if pos == len(text):
            return tuple(parts)
        if text[pos] != ".":
            raise ConfigError(f"Backup policy field '{where}' is not a valid name: {text!r}", fix="write schema.table")
        pos += 1


def table_name(text: Any, where: str) -> tuple[str, str]:
    """(schema, table) from 'table', 'schema.table' or quoted forms."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"Backup policy field '{where}' must be a table name", f"it is {text!r}", "fix the policy")
    parts = split_name(text, where)
    if len(parts) == 1:
        return ("public", parts[0])
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise ConfigError(f"Backup policy field '{where}' has too many parts: {text!r}", fix="write schema.table")


def column_name(text: Any, where: str) -> str:
    """One column: '"Quoted"' unquoted, anything else taken as written (a column is never dotted)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"Backup policy field '{where}' must be a column name", f"it is {text!r}", "fix the policy")
    text = text.strip()
    if text.startswith('"'):
        parts = split_name(text, where)
        if len(parts) != 1:
            raise ConfigError(f"Backup policy field '{where}' must be one column name: {text!r}", fix="fix it")
        return parts[0]
    return text


@dataclass(frozen=True)
class SoftReference:
    """A column holding wedding ids without a foreign key (schema.table.column)."""

    schema: str
    table: str
    column: str

    @classmethod
    def parse(cls, text: Any, where: str) -> SoftReference:
        if not isinstance(text, str):
            raise ConfigError(f"Backup policy field '{where}' must be schema.table.column", f"it is {text!r}")
        parts = split_name(text, where)
        if len(parts) == 2:
            return cls("public", parts[0], parts[1])
        if len(parts) == 3:
            return cls(*parts)
        raise ConfigError(
            f"Backup policy field '{where}' must be schema.table.column", f"it is {text!r}", "fix the policy"
        )


@dataclass(frozen=True)
class WeddingsPolicy:
    table: tuple[str, str] = ("public", "weddings")
    key: str = "id"
    date_column: str = "wedding_date"
    time_zone: str = "Europe/London"
    proximity_days: int = 7
    frequency_minutes: int = 15
    batch_size: int = 100
    soft_references: tuple[SoftReference, ...] = ()
    # data type -> the tables ((schema, table); schema '' = any schema) holding it
    data_types: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    wedding_day_rpo_minutes: int = 5
    # retention policy name -> days (None: kept for ever)
    retention_days: dict[str, int | None] = field(default_factory=lambda: dict(DEFAULT_RETENTION_DAYS))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def retention_for(self, name: str) -> int | None:
        """Days a wedding backup under retention policy ``name`` is kept (None: permanent)."""
        if name not in self.retention_days:
            raise ConfigError(
                f"Unknown wedding retention policy '{name}'", fix=f"use one of {', '.join(RETENTION_POLICIES)}"
            )
        return self.retention_days[name]


def _positive(d: dict[str, Any], key: str, default: int, minimum: int = 1) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"Backup policy field 'weddings.{key}' must be a whole number of at least {minimum}",
            f"it is {value!r}",
            "fix it in the policy",
        )
    return value


def _data_types(raw: Any) -> dict[str, tuple[tuple[str, str], ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            "Backup policy field 'weddings.data_types' must be a mapping of type -> tables",
            f"it is {raw!r}",
            "write it as {guests: [guests], timeline: [timeline_events]}",
        )
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for name, tables in raw.items():
        where = f"weddings.data_types.{name}"
        if isinstance(tables, str):
            tables = [tables]
        if not isinstance(tables, list) or not tables:
            raise ConfigError(f"Backup policy field '{where}' must be a list of tables", f"it is {tables!r}")
        out[str(name)] = tuple(_listed_table(t, where) for t in tables)
    return out


def _listed_table(text: Any, where: str) -> tuple[str, str]:
    """(schema, table); a bare name has schema '' and matches that table in any schema of the slice."""
    parts = split_name(text, where) if isinstance(text, str) else ()
    if len(parts) == 1:
        return ("", parts[0])
    return table_name(text, where)


def _retention(raw: Any) -> dict[str, int | None]:
    days = dict(DEFAULT_RETENTION_DAYS)
    if raw is None:
        return days
    if not isinstance(raw, dict):
        raise ConfigError("Backup policy field 'weddings.retention_days' must be a mapping", f"it is {raw!r}")
    for name, value in raw.items():
        if name not in RETENTION_POLICIES:
            raise ConfigError(
                f"Backup policy field 'weddings.retention_days.{name}' is not a retention policy",
                fix=f"use {', '.join(RETENTION_POLICIES)}",
            )
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(
                f"Backup policy field 'weddings.retention_days.{name}' must be days (>= 1) or null (for ever)",
                f"it is {value!r}",
            )
        days[name] = value
    return days


def parse_weddings_policy(raw: Any) -> WeddingsPolicy:
    """The ``weddings`` section (absent: the defaults, which fit the demo platform)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("Backup policy section 'weddings' must be a mapping", f"it is {raw!r}", "fix the policy")
    known = {
        "table", "key", "date_column", "time_zone", "proximity_days", "frequency_minutes", "batch_size",
        "soft_references", "data_types", "wedding_day_rpo_minutes", "retention_days",
    }  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"Backup policy section 'weddings' has unknown keys {unknown}", fix=f"use {', '.join(sorted(known))}"
        )
    zone = str(raw.get("time_zone", "Europe/London"))
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(
            f"Backup policy field 'weddings.time_zone' is not a time zone: {zone!r}",
            fix="use an IANA zone such as Europe/London",
        ) from e
    softs = raw.get("soft_references") or []
    if not isinstance(softs, list):
        raise ConfigError("Backup policy field 'weddings.soft_references' must be a list", f"it is {softs!r}")
    frequency = _positive(raw, "frequency_minutes", 15)
    if frequency < 5:
        raise ConfigError(
            "Backup policy field 'weddings.frequency_minutes' must be at least 5", f"it is {frequency}", "raise it"
        )
    return WeddingsPolicy(
        table=table_name(raw.get("table", "public.weddings"), "weddings.table"),
        key=column_name(raw.get("key", "id"), "weddings.key"),
        date_column=column_name(raw.get("date_column", "wedding_date"), "weddings.date_column"),
        time_zone=zone,
        proximity_days=_positive(raw, "proximity_days", 7, minimum=0),
        frequency_minutes=frequency,
        batch_size=_positive(raw, "batch_size", 100),
        soft_references=tuple(SoftReference.parse(s, f"weddings.soft_references[{i}]") for i, s in enumerate(softs)),
        data_types=_data_types(raw.get("data_types")),
        wedding_day_rpo_minutes=_positive(raw, "wedding_day_rpo_minutes", 5),
        retention_days=_retention(raw.get("retention_days")),
    )
