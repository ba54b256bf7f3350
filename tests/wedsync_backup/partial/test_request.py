"""The partial scopes' params as a form, a template or the CLI give them, and the checks across them (the
api-server runs these before a DAG run exists)."""

from __future__ import annotations

import pytest
from wedsync_airflow.restore_checks import cross_field_problems
from wedsync_backup.partial.request import as_names, scope_problems


@pytest.mark.parametrize(
    ("given", "names"),
    [
        (None, []),
        ("None", []),
        ([], []),
        (["12", " 13 ", "12"], ["12", "13"]),
        ("12, 13", ["12", "13"]),
        ("12\n13\n", ["12", "13"]),
        ('["12", "w 1"]', ["12", "w 1"]),
        ("['12']", ["12"]),
    ],
)
def test_list_params_in_every_shape(given: object, names: list[str]) -> None:
    assert as_names(given) == names


def test_each_scope_needs_its_own_params_and_no_others() -> None:
    assert scope_problems({"scope": "wedding-only", "wedding_ids": ["1"], "data_types": ["guests"]}) == []
    assert scope_problems({"scope": "selective", "tables": ["public.guests"], "into_schema": "inc_42"}) == []
    assert scope_problems({"scope": "complete"}) == []
    assert scope_problems({"scope": "wedding-only"}) == [
        "scope is 'wedding-only' but no wedding_ids were given: name the weddings to bring back"
    ]
    assert scope_problems({"scope": "complete", "tables": ["guests"]}) == [
        "tables is given but scope is 'complete': tables goes with scope selective"
    ]
    assert (
        "into_schema 'Bad Name' is not a plain schema name"
        in scope_problems({"scope": "selective", "tables": ["t"], "into_schema": "Bad Name"})[0]
    )


def test_the_api_server_refuses_them_with_the_other_cross_field_problems() -> None:
    problems = cross_field_problems({"scope": "selective", "mode": "backup_id", "target_conn_id": "wedsync_source"})
    assert problems == [
        "mode is 'backup_id' but no backup_id was given: set backup_id (see backup_operations)",
        "scope is 'selective' but no tables were given: name them, e.g. public.guests",
    ]
