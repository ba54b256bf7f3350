"""Request validation for console actions: the DAGs' own Params and checks, one message per field.

A restore is checked exactly as ``emergency_restore`` checks it: first the DAG's Params (their JSON
schema, read from the DAG's serialized version), then the plan task's own cross-field checks (the
confirmation phrase, the mode's companion field, never the source or catalog), run by the operator class
itself. Nothing is triggered unless every check passes.
"""

from __future__ import annotations

import re
from typing import Any

from wedsync_backup.errors import ConfigError, WedSyncError
from wedsync_backup.policy import load_policy

from wedsync_console.errors import FieldErrors
from wedsync_console.runs import param_errors, resolved_params

RESTORE_FIELDS = (
    "mode",
    "target_time",
    "recovery_point",
    "backup_id",
    "scope",
    "from_target",
    "target_conn_id",
    "dry_run",
    "confirm",
    "reason",
    "wedding_ids",
    "data_types",
    "tables",
    "into_schema",
)
COMPONENTS = ("database", "files", "configurations")  # what this system backs up
KNOWN_COMPONENTS = ("database", "files", "configurations")
FULL_ONLY = ("configurations",)  # stored by every full (and manual) backup, never by the other types


def components_of(kind: str, *, files_enabled: bool = True) -> list[str]:
    """What a backup of type ``kind`` stores: every component (whether or not it was asked for); files only
    when the policy names a files bucket."""
    return [
        c for c in COMPONENTS if (kind in ("full", "manual") or c not in FULL_ONLY) and (files_enabled or c != "files")
    ]


BACKUP_TYPES = ("full", "incremental", "manual", "wedding")
PRIORITIES = ("normal", "high")
WEDDING_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


def _field_of(error: WedSyncError, fields: tuple[str, ...]) -> str:
    """The parameter an operator error is about: the last one its first sentence names."""
    what = error.what
    if what.startswith("Airflow connection"):
        return "target_conn_id"
    if "named recovery point" in what:
        return "recovery_point"
    if "confirm" in what.lower():
        return "confirm"
    named = sorted((m.start(), f) for f in fields for m in re.finditer(rf"\b{f}\b", what))
    return named[-1][1] if named else "conf"


def restore_conf(dag_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The conf for an ``emergency_restore`` run, or FieldErrors naming every bad field."""
    errors = param_errors(dag_id, body)
    if errors:
        raise FieldErrors(errors)
    values = resolved_params(dag_id, body)
    from wedsync_airflow.connections import catalog
    from wedsync_airflow.targets import get_connection
    from wedsync_backup.commands.restore import RestoreRequest, with_named_point

    req = RestoreRequest(**{k: values.get(k) for k in RESTORE_FIELDS})
    try:
        policy = load_policy()
        with_named_point(req, lambda: catalog(policy).dsn).validate(policy)
        get_connection(str(values["target_conn_id"]), "restore target")
    except WedSyncError as e:
        raise FieldErrors({_field_of(e, RESTORE_FIELDS): str(e)}) from e
    return body


def backup_request(body: dict[str, Any]) -> dict[str, Any]:
    """A manual backup request (the specification's shape), checked field by field."""
    errors: dict[str, str] = {}
    allowed = {"type", "reason", "includeComponents", "priorityLevel", "weddingIds"}
    for k in body:
        if k not in allowed:
            errors[k] = f"unknown field; the fields are {', '.join(sorted(allowed))}"
    kind = body.get("type")
    if kind not in BACKUP_TYPES:
        errors["type"] = f"must be one of {', '.join(BACKUP_TYPES)}"
    reason = body.get("reason")
    if not isinstance(reason, str) or len(reason.strip()) < 3:
        errors["reason"] = "say why this backup is taken (at least 3 characters)"
    elif len(reason) > 500:
        errors["reason"] = "keep the reason to 500 characters"
    components = body.get("includeComponents", ["database"])
    if not isinstance(components, list) or not components or not all(isinstance(c, str) for c in components):
        errors["includeComponents"] = f"a non-empty list of {', '.join(KNOWN_COMPONENTS)}"
    else:
        unknown = [c for c in components if c not in KNOWN_COMPONENTS]
        missing = [c for c in components if c in KNOWN_COMPONENTS and c not in COMPONENTS]
        if unknown:
            known = ", ".join(KNOWN_COMPONENTS)
            errors["includeComponents"] = f"unknown component(s) {', '.join(unknown)}: use {known}"
        elif missing:
            errors["includeComponents"] = (
                f"{', '.join(missing)} cannot be backed up by this system yet: only {', '.join(COMPONENTS)}"
            )
        elif kind in BACKUP_TYPES and set(components) - set(components_of(kind)):
            errors["includeComponents"] = (
                f"a {kind} backup stores {', '.join(components_of(kind))}; configurations come with a full or "
                "manual backup"
            )
    priority = body.get("priorityLevel", "normal")
    if priority not in PRIORITIES:
        errors["priorityLevel"] = f"must be one of {', '.join(PRIORITIES)}"
    weddings = body.get("weddingIds")
    if kind == "wedding":
        if not isinstance(weddings, list) or not weddings:
            errors["weddingIds"] = "a wedding backup needs one or more wedding ids"
        elif not all(isinstance(w, str) and WEDDING_ID.match(w) for w in weddings):
            errors["weddingIds"] = "each wedding id is letters, digits, and . _ : - (at most 100 characters)"
    elif weddings:
        errors["weddingIds"] = "only a backup of type wedding takes wedding ids"
    if errors:
        raise FieldErrors(errors)
    return {
        "type": kind,
        "reason": reason.strip(),
        "includeComponents": components,
        "priorityLevel": priority,
        "weddingIds": weddings or [],
    }


def label(body: dict[str, Any]) -> str:
    from wedsync_backup.named_points import clean_label

    extra = [k for k in body if k != "label"]
    if extra:
        raise FieldErrors({k: "unknown field; the only field is label" for k in extra})
    try:
        return clean_label(body.get("label") if isinstance(body.get("label"), str) else "")
    except ConfigError as e:
        raise FieldErrors({"label": str(e)}) from e
