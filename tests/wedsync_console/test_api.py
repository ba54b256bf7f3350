"""The console API against a real api-server with the plugin, a real catalog and real DAG runs.

Every route; 401 without a login, 403 for a viewer's actions, 422 with one message per field and nothing
triggered, 429 with Retry-After, and the audit row every POST leaves. The rate-limit tests give the user
earlier accepted actions in the audit log, as other api-server workers would have written them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.wedsync_console.conftest import Console

pytestmark = pytest.mark.slow

API = "/wedsync-backup/api"
LABEL = "before the guest import"


@pytest.fixture(scope="module")
def clients(console: Console) -> Iterator[dict[str, httpx.Client]]:
    made = {
        user: httpx.Client(base_url=console.url, headers={"Authorization": f"Bearer {console.token(user)}"}, timeout=60)
        for user in ("admin", "oncall", "viewer", "operator")
    }
    made["anonymous"] = httpx.Client(base_url=console.url, timeout=60)
    yield made
    for c in made.values():
        c.close()


def audit_rows(console: Console, action: str, since_id: int = 0) -> list[dict[str, Any]]:
    with console.catalog() as conn:
        return conn.execute(
            "SELECT id, actor, action, backup_id, details FROM audit_log WHERE action = %s AND id > %s ORDER BY id",
            (f"console.{action}", since_id),
        ).fetchall()


def last_audit_id(console: Console) -> int:
    with console.catalog() as conn:
        return conn.execute("SELECT coalesce(max(id), 0) AS n FROM audit_log").fetchone()["n"]


def run_count(client: httpx.Client, dag_id: str) -> int:
    r = client.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 1})
    assert r.status_code == 200, r.text
    return r.json()["total_entries"]


def wait_run(client: httpx.Client, dag_id: str, run_id: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")


def wait_restore(client: httpx.Client, run_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"{API}/restores/{run_id}")
        assert r.status_code == 200, r.text
        if r.json()["state"] in ("success", "failed"):
            return r.json()
        time.sleep(1)
    raise TimeoutError(f"restore run {run_id} did not finish within {timeout:.0f}s")


# --- who ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/status", "/history", "/recovery-points", "/me", "/restores/nope"])
def test_every_read_needs_a_login(clients: dict[str, httpx.Client], path: str) -> None:
    r = clients["anonymous"].get(API + path)
    assert r.status_code == 401, r.text
    bad = clients["anonymous"].get(API + path, headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code in (401, 403), bad.text


def test_a_viewer_reads_but_may_not_act(clients: dict[str, httpx.Client]) -> None:
    me = clients["viewer"].get(f"{API}/me").json()
    assert me == {"user": "viewer", "roles": ["viewer"], "can_act": False}
    assert clients["viewer"].get(f"{API}/status").status_code == 200
    assert clients["admin"].get(f"{API}/me").json()["can_act"] is True


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/backups", {"type": "full", "reason": "viewer tries"}),
        ("/restores", {"target_conn_id": "restore_target", "reason": "viewer tries"}),
        ("/recovery-points", {"label": "viewer tries"}),
    ],
)
def test_actions_need_the_admin_role_and_are_audited(
    console: Console, clients: dict[str, httpx.Client], path: str, body: dict[str, Any]
) -> None:
    before = last_audit_id(console)
    for user in ("viewer", "operator"):
        r = clients[user].post(API + path, json=body)
        assert r.status_code == 403, r.text
        assert "Admin role" in r.json()["detail"]
    r = clients["anonymous"].post(API + path, json=body)
    assert r.status_code == 401, r.text
    with console.catalog() as conn:
        rows = conn.execute(
            "SELECT actor, details->>'outcome' AS outcome, details->>'status_code' AS code,"
            " details->>'client' AS client FROM audit_log WHERE id > %s ORDER BY id",
            (before,),
        ).fetchall()
    assert [(r["actor"], r["outcome"], r["code"]) for r in rows] == [
        ("viewer", "forbidden", "403"),
        ("operator", "forbidden", "403"),
        ("anonymous", "unauthenticated", "401"),
    ]
    assert all(r["client"] == "127.0.0.1" for r in rows)


def test_a_browser_post_from_another_site_is_refused(console: Console, clients: dict[str, httpx.Client]) -> None:
    cookie = {"_token": console.token("admin")}
    r = httpx.post(
        f"{console.url}{API}/recovery-points",
        json={"label": "cross-site"},
        cookies=cookie,
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403, r.text
    assert "evil.example" in r.json()["detail"]


# --- reads ------------------------------------------------------------------------------------------------------
def test_status(console: Console, clients: dict[str, httpx.Client]) -> None:
    s = clients["viewer"].get(f"{API}/status").json()
    tiers = {t["tier"]: t for t in s["tiers"]}
    full = tiers["full"]
    assert full["health"] == "ok" and full["deployed"] is True
    assert full["newest_point"]["backup_id"] == console.backup_id
    assert full["age_seconds"] < full["rpo_seconds"] and full["age_text"].endswith("ago")
    assert full["last_run"]["state"] == "success"
    archive = tiers["archive"]  # deployed (issue 10), but no archive has run in this test
    assert archive["deployed"] is True and archive["newest_point"] is None
    assert archive["health"] == "critical" and archive["health_text"].startswith("no verified backup yet")
    assert archive["paused"] is True and archive["health_text"].endswith("the DAG is paused")
    wedding = tiers["wedding"]  # deployed (issue 9), created paused, no wedding backup in this test
    assert wedding["deployed"] is True and wedding["newest_point"] is None and wedding["paused"] is True
    assert {t["target_name"]: (t["healthy"], t["backups"]) for t in s["targets"]} == {
        "primary": (True, 1),
        "secondary": (True, 1),
        "offsite": (True, 1),
    }
    assert all(t["bytes_used"] > 0 for t in s["targets"])
    assert s["rule_321"]["compliant"] is True
    assert s["success_rate_30d"] == {"completed": 1, "failed": 0, "rate": 1.0}


def test_history_with_figures_filters_and_paging(console: Console, clients: dict[str, httpx.Client]) -> None:
    page = clients["viewer"].get(f"{API}/history").json()
    assert page["total"] >= 1
    b = next(i for i in page["items"] if i["backup_id"] == console.backup_id)
    assert b["status"] == "completed" and b["copies_verified"] == 3
    assert sorted(c["target_name"] for c in b["replicas"] if c["verified"]) == ["offsite", "primary", "secondary"]
    with psycopg.connect(console.source_dsn) as src:
        counts = {
            t: src.execute(f"SELECT count(*) FROM public.{t}").fetchone()[0]
            for t in ("weddings", "guests", "files", "timeline_events")
        }
    assert b["platform"] == {
        "weddings": counts["weddings"],
        "guests": counts["guests"],
        "photos": counts["files"],
        "timeline_events": counts["timeline_events"],
    }
    assert b["compression_ratio"] > 1 and b["key_id"].startswith("mk-")

    get = clients["viewer"].get
    assert get(f"{API}/history", params={"type": "archive"}).json()["items"] == []
    assert get(f"{API}/history", params={"status": "completed", "limit": 1}).json()["limit"] == 1
    since = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert get(f"{API}/history", params={"since": since}).json()["total"] == 0
    bad = get(f"{API}/history", params={"type": "weekly", "status": "done", "since": "2026-01-01T00:00:00"})
    assert bad.status_code == 422
    assert set(bad.json()["errors"]) == {"type", "status", "since"}
    assert get(f"{API}/history", params={"limit": 0}).status_code == 422


def test_recovery_points_and_named_points(console: Console, clients: dict[str, httpx.Client]) -> None:
    before = last_audit_id(console)
    r = clients["admin"].post(f"{API}/recovery-points", json={"label": f"  {LABEL} "})
    assert r.status_code == 201, r.text
    point = r.json()
    assert point["label"] == LABEL and point["wal_position"] and point["created_by"] == "admin"

    again = clients["admin"].post(f"{API}/recovery-points", json={"label": LABEL})
    assert again.status_code == 422 and "already exists" in again.json()["errors"]["label"]
    empty = clients["admin"].post(f"{API}/recovery-points", json={"label": " ", "extra": 1})
    assert empty.status_code == 422 and set(empty.json()["errors"]) == {"extra"}
    assert clients["admin"].post(f"{API}/recovery-points", json={"label": ""}).status_code == 422

    pts = clients["viewer"].get(f"{API}/recovery-points").json()
    assert [c["full_backup_id"] for c in pts["chains"]] == [console.backup_id]
    assert pts["gaps"] == [] and pts["archives"] == []
    assert [(n["label"], n["lsn"]) for n in pts["named"]] == [(LABEL, point["wal_position"])]
    wedding = clients["viewer"].get(f"{API}/recovery-points", params={"wedding_id": "w-1"}).json()["wedding"]
    assert wedding["wedding_id"] == "w-1" and wedding["wedding_backups"] == []
    assert clients["viewer"].get(f"{API}/recovery-points", params={"wedding_id": "bad id!"}).status_code == 422

    rows = audit_rows(console, "recovery_point", before)
    assert [(r["actor"], r["details"]["outcome"]) for r in rows] == [
        ("admin", "accepted"),
        ("admin", "invalid"),
        ("admin", "invalid"),
        ("admin", "invalid"),
    ]
    assert rows[0]["details"]["params"] == {"label": f"  {LABEL} "}


# --- manual backups -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"type": "weekly", "reason": "x"}, {"type", "reason"}),
        ({"type": "full", "reason": "ok reason", "includeComponents": ["photos"]}, {"includeComponents"}),
        (
            {"type": "full", "reason": "ok reason", "priorityLevel": "urgent", "colour": "red"},
            {"priorityLevel", "colour"},
        ),
        ({"type": "wedding", "reason": "ok reason"}, {"weddingIds"}),
        ({"type": "full", "reason": "ok reason", "weddingIds": ["w-1"]}, {"weddingIds"}),
        (
            {"type": "incremental", "reason": "ok reason", "includeComponents": ["configurations"]},
            {"includeComponents"},
        ),
    ],
)
def test_bad_backup_requests_trigger_nothing(
    console: Console, clients: dict[str, httpx.Client], body: dict[str, Any], fields: set[str]
) -> None:
    runs_before = run_count(clients["admin"], "backup_daily_full")
    r = clients["admin"].post(f"{API}/backups", json=body)
    assert r.status_code == 422, r.text
    assert set(r.json()["errors"]) == fields
    assert run_count(clients["admin"], "backup_daily_full") == runs_before
    assert audit_rows(console, "backup")[-1]["details"]["outcome"] == "invalid"


@pytest.fixture(scope="module")
def incremental_run(console: Console, clients: dict[str, httpx.Client]) -> dict[str, Any]:
    """A real manual incremental backup, triggered through the API (the scheduler runs it)."""
    r = clients["admin"].post(
        f"{API}/backups", json={"type": "incremental", "reason": "after the guest import", "priorityLevel": "high"}
    )
    assert r.status_code == 202, r.text
    return r.json()


def test_a_manual_backup_triggers_the_dag_as_the_user(
    console: Console, clients: dict[str, httpx.Client], incremental_run: dict[str, Any]
) -> None:
    b = incremental_run
    assert b["dag_id"] == "backup_hourly_incremental"
    assert b["backup_id"].startswith("incremental-")
    # an incremental stores no configurations; files only where the policy names a files bucket (not here)
    assert b["scheduled_components"] == ["database"] and b["recovery_points"]
    run = clients["admin"].get(f"/api/v2/dags/backup_hourly_incremental/dagRuns/{b['run_id']}").json()
    assert run["triggering_user_name"] == "admin" and run["run_type"] == "manual"
    assert run["conf"]["reason"] == "after the guest import"
    rows = [r for r in audit_rows(console, "backup") if r["details"]["outcome"] in ("accepted", "triggered")]
    assert rows[-1]["details"]["outcome"] == "triggered" and rows[-1]["details"]["run_id"] == b["run_id"]
    assert rows[-1]["backup_id"] == b["backup_id"]
    assert rows[-2]["details"]["outcome"] == "accepted" and rows[-1]["details"]["reservation"] == str(rows[-2]["id"])


def test_a_wedding_backup_triggers_backup_wedding_now(console: Console, clients: dict[str, httpx.Client]) -> None:
    body = {"type": "wedding", "reason": "before the seating import", "weddingIds": ["w-1", "w-2"]}
    r = clients["admin"].post(f"{API}/backups", json=body)
    assert r.status_code == 202, r.text
    b = r.json()
    assert b["dag_id"] == "backup_wedding_now" and b["backup_id"] is None
    assert b["recovery_points"] == ["a wedding recovery point for each of w-1, w-2"]
    run = clients["admin"].get(f"/api/v2/dags/backup_wedding_now/dagRuns/{b['run_id']}").json()
    assert run["conf"] == {"wedding_ids": ["w-1", "w-2"], "reason": "before the seating import"}


@pytest.mark.adds_a_backup  # it completes: the console's other tests expect its first backup to be the newest
def test_a_manual_backup_is_recorded_as_manual_with_its_reason_and_configurations(
    console: Console, clients: dict[str, httpx.Client]
) -> None:
    """Type manual runs backup_daily_full as a manual backup: the catalog says manual, with the reason; and
    every full backup (the console's first one and this one) stores the configurations component."""
    with console.catalog() as conn:
        first = conn.execute(
            "SELECT components_backed_up FROM backup_operations WHERE backup_id = %s", (console.backup_id,)
        ).fetchone()
    assert {"database", "configurations"} <= set(first["components_backed_up"])
    body = {
        "type": "manual",
        "reason": "before the supplier import",
        "includeComponents": ["database", "configurations"],
    }
    r = clients["admin"].post(f"{API}/backups", json=body)
    assert r.status_code == 202, r.text
    b = r.json()
    assert b["dag_id"] == "backup_daily_full" and b["backup_id"].startswith("manual-")
    assert {"database", "configurations"} <= set(b["scheduled_components"])
    assert wait_run(clients["admin"], "backup_daily_full", b["run_id"]) == "success", console.log_tail("scheduler")
    with console.catalog() as conn:
        row = conn.execute(
            "SELECT backup_type, reason, status, components_backed_up FROM backup_operations WHERE backup_id = %s",
            (b["backup_id"],),
        ).fetchone()
    assert (row["backup_type"], row["reason"], row["status"]) == ("manual", "before the supplier import", "completed")
    assert {"database", "configurations"} <= set(row["components_backed_up"])


# --- rate limits ---------------------------------------------------------------------------------------------------
def _earlier_actions(console: Console, action: str, ages_minutes: list[int]) -> None:
    """Accepted actions of user 'oncall', as any api-server worker records them."""
    now = datetime.now(UTC)
    with console.catalog() as conn:
        for age in ages_minutes:
            conn.execute(
                "INSERT INTO audit_log (at, actor, action, details) VALUES (%s, 'oncall', %s, %s)",
                (now - timedelta(minutes=age), f"console.{action}", Jsonb({"outcome": "accepted", "params": {}})),
            )


def test_rate_limits_answer_429_with_retry_after(console: Console, clients: dict[str, httpx.Client]) -> None:
    _earlier_actions(console, "backup", [50, 40, 30, 20, 10, 70])  # five in the last hour, one older
    r = clients["oncall"].post(f"{API}/backups", json={"type": "full", "reason": "sixth this hour"})
    assert r.status_code == 429, r.text
    assert 590 <= int(r.headers["Retry-After"]) <= 601  # the oldest of the five frees its slot in ~10 min
    assert "5 backup per hour" in r.json()["detail"]

    _earlier_actions(console, "restore", [55, 5, 1])
    r = clients["oncall"].post(f"{API}/restores", json={"target_conn_id": "restore_target", "reason": "fourth"})
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["Retry-After"]) <= 301
    outcomes = [row["details"]["outcome"] for row in audit_rows(console, "restore") if row["actor"] == "oncall"]
    assert outcomes[-1] == "rate_limited"
    # The admin's own count is separate: per user.
    assert clients["admin"].post(f"{API}/restores", json={"reason": "no target"}).status_code == 422


# --- restores ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": "INC-42"}, "target_conn_id"),
        ({"target_conn_id": "restore_target", "reason": "x"}, "reason"),
        ({"target_conn_id": "restore_target", "reason": "INC-42", "mode": "yesterday"}, "mode"),
        ({"target_conn_id": "restore_target", "reason": "INC-42", "target_time": "noon"}, "target_time"),
        ({"target_conn_id": "restore_target", "reason": "INC-42", "force": True}, "force"),
        ({"target_conn_id": "restore_target", "reason": "INC-42", "dry_run": False, "confirm": "yes"}, "confirm"),
        ({"target_conn_id": "wedsync_source", "reason": "INC-42"}, "target_conn_id"),
        ({"target_conn_id": "no_such_db", "reason": "INC-42"}, "target_conn_id"),
        ({"target_conn_id": "restore_target", "reason": "INC-42", "mode": "point_in_time"}, "target_time"),
        ({"target_conn_id": "restore_target", "reason": "INC-42", "mode": "backup_id"}, "backup_id"),
        (
            {"target_conn_id": "restore_target", "reason": "INC-42", "mode": "point_in_time", "recovery_point": "nope"},
            "recovery_point",
        ),
        ({"target_conn_id": "restore_target", "reason": "INC-42", "recovery_point": LABEL}, "mode"),
        (
            {
                "target_conn_id": "restore_target",
                "reason": "INC-42",
                "mode": "point_in_time",
                "recovery_point": LABEL,
                "target_time": "2026-01-01T00:00:00Z",
            },
            "target_time",
        ),
    ],
)
def test_bad_restores_are_refused_like_the_dag_refuses_them(
    console: Console, clients: dict[str, httpx.Client], body: dict[str, Any], field: str
) -> None:
    runs_before = run_count(clients["admin"], "emergency_restore")
    r = clients["admin"].post(f"{API}/restores", json=body)
    assert r.status_code == 422, r.text
    assert list(r.json()["errors"]) == [field], r.json()
    assert run_count(clients["admin"], "emergency_restore") == runs_before


def test_a_restore_dry_run_and_its_plan(console: Console, clients: dict[str, httpx.Client]) -> None:
    r = clients["admin"].post(f"{API}/restores", json={"target_conn_id": "restore_target", "reason": "INC-42 drill"})
    assert r.status_code == 202, r.text
    assert r.json()["dry_run"] is True
    done = wait_restore(clients["viewer"], r.json()["run_id"])
    assert done["state"] == "success", done
    assert done["event"]["status"] == "planned" and done["plan"]["backup_id"] == console.backup_id
    assert done["tasks"]["restore"] == "skipped"  # a dry run touches nothing
    assert clients["viewer"].get(f"{API}/restores/manual__nope").status_code == 404


def test_a_restore_to_a_named_point(
    console: Console, clients: dict[str, httpx.Client], incremental_run: dict[str, Any]
) -> None:
    """The named point lies between the full backup and the incremental: the plan replays up to it."""
    assert wait_run(clients["admin"], "backup_hourly_incremental", incremental_run["run_id"]) == "success"
    r = clients["admin"].post(
        f"{API}/restores",
        json={"mode": "point_in_time", "recovery_point": LABEL, "target_conn_id": "restore_target", "reason": "INC-43"},
    )
    assert r.status_code == 202, r.text
    done = wait_restore(clients["viewer"], r.json()["run_id"])
    assert done["state"] == "success", done
    point = next(n for n in clients["viewer"].get(f"{API}/recovery-points").json()["named"] if n["label"] == LABEL)
    plan = done["plan"]
    assert plan["backup_id"] == console.backup_id
    assert datetime.fromisoformat(plan["until"]) == datetime.fromisoformat(point["at"]), plan
    assert plan["incremental_backup_ids"] == [incremental_run["backup_id"]]
    # every POST of this module left its audit entry
    with console.catalog() as conn:
        actions = {r["action"] for r in conn.execute("SELECT DISTINCT action FROM audit_log").fetchall()}
    assert {"console.backup", "console.restore", "console.recovery_point"} <= actions


def test_the_plugin_serves_the_page_its_module_and_its_api_description(
    console: Console, clients: dict[str, httpx.Client]
) -> None:
    page = clients["anonymous"].get("/wedsync-backup/")
    assert page.status_code == 200 and 'src="static/console.js"' in page.text
    module = clients["anonymous"].get("/wedsync-backup/static/console.js")
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    spec = clients["anonymous"].get("/wedsync-backup/openapi.json").json()
    routes = {"/api/status", "/api/history", "/api/recovery-points", "/api/backups", "/api/restores"}
    assert routes <= set(spec["paths"])
    plugins = clients["admin"].get("/api/v2/plugins").json()["plugins"]
    console_plugin = next(p for p in plugins if p["name"] == "wedsync_console")
    assert console_plugin["fastapi_apps"][0]["url_prefix"] == "/wedsync-backup"
    assert [(v["name"], v["url_route"]) for v in console_plugin["external_views"]] == [("Backups", "backups")]
