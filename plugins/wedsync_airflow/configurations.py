"""Airflow -> the configurations component: the connections and variables the DAGs use, as plain data.

Read inside a task (never at parse time). The bundle holds secrets: it goes straight to the core command
and is never logged, returned or pushed to XCom.
"""

from __future__ import annotations

from typing import Any

import yaml
from airflow.sdk import BaseHook, Variable
from airflow.sdk.exceptions import AirflowNotFoundException
from wedsync_backup.configurations.bundle import CONNECTION_FIELDS, ConfigurationBundle
from wedsync_backup.configurations.policy import configurations_policy, connection_ids
from wedsync_backup.policy import policy_file_path


def connection_fields(conn: Any) -> dict[str, Any]:
    """An Airflow connection as ``airflow connections export --format json`` writes it (extra as text)."""
    return {k: getattr(conn, k, None) for k in CONNECTION_FIELDS}


def existing_connection(conn_id: str) -> Any | None:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def existing_variable(key: str) -> Any:
    """The variable's value, or None."""
    return Variable.get(key, default=None)


def gather_bundle(policy_path: str | None = None) -> ConfigurationBundle:
    """The policy in force, and every connection and variable it says the DAGs use, from this Airflow."""
    text = policy_file_path(policy_path).read_text()
    raw = yaml.safe_load(text) or {}
    connections: dict[str, dict[str, Any]] = {}
    variables: dict[str, str] = {}
    missing = []
    for conn_id in connection_ids(raw):
        conn = existing_connection(conn_id)
        if conn is None:
            missing.append(f"connection {conn_id}")
        else:
            connections[conn_id] = connection_fields(conn)
    for key in configurations_policy(raw).variables:
        value = existing_variable(key)
        if value is None:
            missing.append(f"variable {key}")
        else:
            variables[key] = value
    return ConfigurationBundle(text, connections, variables, missing)


def is_defined(kind: str, name: str) -> bool:
    """Whether this Airflow already has the connection or variable (a restore leaves those as they are)."""
    if kind == "connection":
        return existing_connection(name) is not None
    return existing_variable(name) is not None
