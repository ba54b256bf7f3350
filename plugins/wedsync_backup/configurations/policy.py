"""The policy's ``configurations`` section: which connections, variables and tables the component stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from wedsync_backup.errors import ConfigError


@dataclass(frozen=True)
class ConfigurationsPolicy:
    """``connections``: conn ids the policy does not name itself (every ``conn_id`` in it is stored anyway);
    ``variables``: Airflow variable keys; ``tables``: ``schema.table`` names read from ``conn_id`` (default:
    the catalog's connection); ``exclude``: conn ids never stored (the master key's connection always is)."""

    connections: tuple[str, ...] = ()
    variables: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    conn_id: str | None = None
    exclude: tuple[str, ...] = ()


def _names(section: dict[str, Any], key: str) -> tuple[str, ...]:
    value = section.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            f"Backup policy field 'configurations.{key}' must be a list of names",
            f"it is {value!r}",
            f"write it as a YAML list, e.g. {key}: [name_one, name_two]",
        )
    return tuple(value)


def configurations_policy(raw: dict[str, Any]) -> ConfigurationsPolicy:
    """The ``configurations`` section of a raw policy mapping (``policy.read_policy_file``)."""
    section = raw.get("configurations") or {}
    if not isinstance(section, dict):
        raise ConfigError(
            "Backup policy section 'configurations' must be a mapping", f"it is {section!r}", "fix the policy"
        )
    tables = _names(section, "tables")
    bad = [t for t in tables if t.count(".") != 1]
    if bad:
        raise ConfigError(
            f"Backup policy field 'configurations.tables' names {', '.join(bad)}",
            "each table must be schema-qualified",
            "write them as schema.table, e.g. public.wedding_backup_settings",
        )
    catalog = raw.get("catalog") or {}
    return ConfigurationsPolicy(
        connections=_names(section, "connections"),
        variables=_names(section, "variables"),
        tables=tables,
        conn_id=section.get("conn_id") or (catalog.get("conn_id") if isinstance(catalog, dict) else None),
        exclude=_names(section, "exclude_connections"),
    )


def _conn_ids(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "conn_id" and isinstance(v, str) and v:
                yield v
            else:
                yield from _conn_ids(v)
    elif isinstance(node, list):
        for v in node:
            yield from _conn_ids(v)


def connection_ids(raw: dict[str, Any]) -> list[str]:
    """The connections the DAGs use: every ``conn_id`` the policy names, plus ``configurations.connections``,
    minus the master key's connection (a backup never carries the key that opens it) and any excluded."""
    conf = configurations_policy(raw)
    encryption = (raw.get("encryption") or {}).get("conn_id")
    never = {encryption, *conf.exclude}
    seen: dict[str, None] = {}
    for conn_id in [*_conn_ids({k: v for k, v in raw.items() if k != "configurations"}), *conf.connections]:
        if conn_id not in never:
            seen.setdefault(conn_id)
    return list(seen)
