"""emergency_restore's cross-field checks, and the api-server middleware that applies them before a run exists."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from wedsync_airflow.restore_checks import TRIGGER_PATH, cross_field_problems
from wedsync_restore_guard import RestoreGuard, WedSyncRestoreGuardPlugin

BASE = {"target_conn_id": "restore_target", "reason": "INC-42"}


@pytest.mark.parametrize(
    "conf",
    [
        BASE,
        {**BASE, "dry_run": False, "confirm": "RESTORE restore_target"},
        {**BASE, "mode": "point_in_time", "target_time": "2026-01-02T03:04:05Z"},
        {**BASE, "mode": "backup_id", "backup_id": "full-x"},
        {**BASE, "confirm": "anything: a dry run needs no confirmation"},
    ],
)
def test_valid_combinations_pass(conf: dict) -> None:
    assert cross_field_problems(conf) == []


@pytest.mark.parametrize(
    ("conf", "says"),
    [
        ({**BASE, "dry_run": False}, "confirm must be exactly 'RESTORE restore_target' (it was '')"),
        ({**BASE, "dry_run": "false", "confirm": "RESTORE other"}, "(it was 'RESTORE other')"),
        ({**BASE, "mode": "point_in_time"}, "no target_time was given"),
        ({**BASE, "mode": "point_in_time", "target_time": "2026-01-02T03:04:05"}, "has no time zone"),
        ({**BASE, "mode": "point_in_time", "target_time": "2999-01-01T00:00:00Z"}, "is in the future"),
        ({**BASE, "mode": "backup_id"}, "no backup_id was given"),
    ],
)
def test_bad_combinations_name_what_to_fix(conf: dict, says: str) -> None:
    problems = cross_field_problems(conf)
    assert len(problems) == 1 and says in problems[0]


def _app(created: list) -> TestClient:
    async def trigger(request: Request) -> JSONResponse:
        created.append(await request.json())
        return JSONResponse({"dag_run_id": "r1"})

    routes = [
        Route(TRIGGER_PATH, trigger, methods=["POST"]),
        Route("/api/v2/dags/other/dagRuns", trigger, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(RestoreGuard)
    return TestClient(app)


def test_middleware_refuses_before_the_api_creates_a_run() -> None:
    created: list = []
    client = _app(created)
    bad = {"logical_date": None, "conf": {**BASE, "dry_run": False, "confirm": "yes please"}}
    r = client.post(TRIGGER_PATH, json=bad)
    assert r.status_code == 400
    assert "emergency_restore refused: Restore not confirmed" in r.json()["detail"]
    assert created == []
    good = {"logical_date": None, "conf": BASE}
    assert client.post(TRIGGER_PATH, content=json.dumps(good)).status_code == 200
    assert client.post("/api/v2/dags/other/dagRuns", json=bad).status_code == 200  # other DAGs untouched
    assert created == [good, bad]


def test_plugin_registers_the_middleware() -> None:
    assert WedSyncRestoreGuardPlugin.fastapi_root_middlewares[0]["middleware"] is RestoreGuard
