"""The partial scopes' parameters: parsed from a form, a template or the CLI, and checked across fields.

``scope_problems`` needs nothing but the parameters (the api-server runs it before a DAG run exists);
``check_partial_request`` adds what needs the policy (the data types it names).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import Policy

WEDDING_ONLY = "wedding-only"
SELECTIVE = "selective"
PARTIAL_SCOPES = (WEDDING_ONLY, SELECTIVE)
# A new schema's name: a plain identifier, so that it is never confused with a quoted or qualified one.
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
UNSET = (None, "", "None", "null", [], ())


def as_names(value: Any) -> list[str]:
    """A list param as given: a list, a JSON list, or comma- or line-separated text; empty items dropped."""
    if value in UNSET:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                value = text.strip("[]").split(",")
        else:
            value = re.split(r"[,\n]", text)
    if not isinstance(value, list | tuple):
        value = [value]
    names = [str(v).strip().strip("'\"") for v in value]
    return list(dict.fromkeys(n for n in names if n))


def given(value: Any) -> bool:
    return bool(as_names(value))


def scope_problems(conf: Mapping[str, Any]) -> list[str]:
    """Each problem of the scope's companion params as one sentence naming the param to fix."""
    scope = conf.get("scope") or "complete"
    problems: list[str] = []
    companions = {
        "wedding_ids": WEDDING_ONLY,
        "data_types": WEDDING_ONLY,
        "tables": SELECTIVE,
        "into_schema": SELECTIVE,
    }
    for param, needs in companions.items():
        if given(conf.get(param)) and scope != needs:
            problems.append(f"{param} is given but scope is '{scope}': {param} goes with scope {needs}")
    if scope == WEDDING_ONLY and not given(conf.get("wedding_ids")):
        problems.append("scope is 'wedding-only' but no wedding_ids were given: name the weddings to bring back")
    if scope == SELECTIVE and not given(conf.get("tables")):
        problems.append("scope is 'selective' but no tables were given: name them, e.g. public.guests")
    into = conf.get("into_schema")
    if scope == SELECTIVE and into not in UNSET and not SCHEMA_NAME.match(str(into)):
        problems.append(
            f"into_schema '{into}' is not a plain schema name: use lower-case letters, digits and _ "
            "(e.g. restored_inc42)"
        )
    return problems


def check_partial_request(
    scope: str, wedding_ids: Any, data_types: Any, tables: Any, into_schema: Any, policy: Policy
) -> None:
    """Raise the first problem of a partial scope's params (the policy's data types included)."""
    conf = {
        "scope": scope,
        "wedding_ids": wedding_ids,
        "data_types": data_types,
        "tables": tables,
        "into_schema": into_schema,
    }
    problems = scope_problems(conf)
    if problems:
        param = problems[0].split(" ", 1)[0]
        raise ConfigError(problems[0], fix=f"correct the {param} parameter" if param != "scope" else "")
    known = policy.weddings.data_types
    unknown = [t for t in as_names(data_types) if t not in known]
    if unknown:
        raise ConfigError(
            f"data_types {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not in the backup policy",
            f"the policy's weddings.data_types are {', '.join(sorted(known)) or 'none'}",
            "name data types the policy lists (or leave data_types empty for the whole wedding)",
        )
