"""The plain data the Airflow adapter hands to the store command, and the JSON files Airflow imports back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CONNECTION_FIELDS = ("conn_type", "description", "host", "login", "password", "schema", "port", "extra")


@dataclass(frozen=True)
class ConfigurationBundle:
    """The policy text, connections (``{conn_id: {conn_type, host, login, password, ...}}``, as
    ``airflow connections export --format json`` writes them) and variables (``{key: value}``).

    It holds secrets: its repr names only ids, and it is never logged, returned or pushed to XCom.
    """

    policy_text: str
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # named by the policy, not defined in this Airflow

    def __repr__(self) -> str:
        return (
            f"ConfigurationBundle(connections={sorted(self.connections)}, variables={sorted(self.variables)}, "
            f"missing={self.missing})"
        )

    def connections_json(self) -> bytes:
        """What ``airflow connections import <file>.json`` accepts."""
        out = {cid: {k: c.get(k) for k in CONNECTION_FIELDS} for cid, c in sorted(self.connections.items())}
        return json.dumps(out, indent=2, sort_keys=True).encode()

    def variables_json(self) -> bytes:
        """What ``airflow variables import <file>.json`` accepts."""
        return json.dumps(dict(sorted(self.variables.items())), indent=2).encode()
