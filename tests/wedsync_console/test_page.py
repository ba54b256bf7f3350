"""The Backups page in a real browser: Chromium from the OS packages, driven by Playwright, on the real stack.

Log in to Airflow, open "Backups" from the navigation, see the backup and its recovery points, pick a moment
on the timeline and run the restore dry run it fills, start a manual backup and watch its progress; a viewer
sees the page but gets 403 on actions. axe-core (vendored) finds no violation at 1440 px and at 375 px.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.wedsync_console.conftest import ARTIFACTS, PASSWORD, Console

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = Path(__file__).resolve().parents[1] / "fixtures" / "vendor" / "axe-core-4.14.1.min.js"
WIDE = {"width": 1440, "height": 900}
NARROW = {"width": 375, "height": 800}
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run ./scripts/bootstrap.sh as root, or apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def login(browser: Any, console: Console, user: str, viewport: dict[str, int]) -> Any:
    page = browser.new_context(viewport=viewport).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{console.url}/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORD.format(user))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))
    return page


def open_backups(page: Any) -> Any:
    """Click "Backups" in Airflow's navigation; the console loads in the UI's frame."""
    page.get_by_role("link", name="Backups").click()
    page.wait_for_url(re.compile(r"/plugin/backups"))
    frame = page.frame_locator("iframe")
    frame.get_by_role("heading", name="Backups", level=1).wait_for()
    frame.locator("#tiers article").first.wait_for()
    return frame


def console_frame(page: Any) -> Any:
    return next(f for f in page.frames if f is not page.main_frame and "/wedsync-backup/" in f.url)


def check_axe(frame: Any, name: str) -> None:
    frame.add_script_tag(path=str(AXE))
    result = frame.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    violations = [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
    ]
    assert violations == [], f"axe-core found violations on {name}: {violations}"


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def test_admin_sees_backups_restores_from_the_timeline_and_starts_a_backup(browser: Any, console: Console) -> None:
    page = login(browser, console, "admin", WIDE)
    ui = open_backups(page)
    ui.get_by_text("Signed in as admin").wait_for()
    full_card = ui.locator("article", has=ui.get_by_role("heading", name="Daily full"))
    assert "Healthy" in full_card.inner_text()
    ui.get_by_role("region", name="Recent backups table").get_by_role("rowheader", name=console.backup_id).wait_for()
    ui.get_by_role("region", name="Restorable ranges table").get_by_role("rowheader", name=console.backup_id).wait_for()
    check_axe(console_frame(page), "the Backups page at 1440 px")
    shot(page, "1440-overview")

    # Pick a moment on the timeline: the newest restorable moment is at its right end.
    track = ui.get_by_role("slider", name="Moment to restore to")
    box = track.bounding_box()
    track.click(position={"x": box["width"] - 4, "y": box["height"] / 2})
    assert ui.get_by_label("Mode").input_value() == "point_in_time"
    assert ui.get_by_label("Moment (ISO 8601 with time zone)").input_value()
    filled = re.compile(r"(Restore dry run filled for|the nearest restorable moment)")
    ui.locator("#restore-result").get_by_text(filled).wait_for()
    ui.get_by_label("Target connection id (an EMPTY database)").fill(console.restore_conn_id)
    ui.get_by_label("Reason (recorded)").nth(1).fill("INC-77 from the timeline")
    ui.get_by_role("button", name="Run dry run").click()
    ui.locator("#restore-result").get_by_text(f"Plan: restore {console.backup_id}").wait_for()
    assert "dry run: nothing was touched" in ui.locator("#restore-result").inner_text()
    shot(page, "1440-restore-dry-run")

    # A manual backup, and its progress while it runs.
    ui.get_by_label("Reason (recorded)").first.fill("before the guest import (browser test)")
    ui.get_by_role("button", name="Start backup").click()
    ui.locator("#backup-result").get_by_text("Backup started.").wait_for()
    progress = ui.locator("#progress .run", has_text="backup_daily_full")
    progress.wait_for()
    # the demo backup takes a few seconds: the 3-second poll may catch it queued rather than in a task
    stage = r"Stage: (waiting for a worker|preflight|backup|export|replicate|verify|commit|prune)"
    progress.get_by_text(re.compile(stage)).wait_for()
    assert re.search(r"elapsed \d+", progress.inner_text())
    progress.scroll_into_view_if_needed()
    shot(page, "1440-backup-progress")


def test_the_page_on_its_own_at_375_and_1440px(browser: Any, console: Console) -> None:
    page = login(browser, console, "admin", NARROW)
    page.goto(f"{console.url}/wedsync-backup/")
    page.get_by_role("region", name="Recent backups table").get_by_role("rowheader", name=console.backup_id).wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]  # nothing wider than a phone
    check_axe(page.main_frame, "the Backups page at 375 px")
    shot(page, "375")
    page.set_viewport_size(WIDE)
    shot(page, "1440-whole-page")


def test_a_viewer_sees_the_page_but_gets_403_on_actions(browser: Any, console: Console) -> None:
    page = login(browser, console, "viewer", WIDE)
    ui = open_backups(page)
    ui.get_by_text("You can view the backups").wait_for()
    ui.get_by_role("region", name="Recent backups table").get_by_role("rowheader", name=console.backup_id).wait_for()
    ui.get_by_label("Label").fill("viewer tries")
    ui.get_by_role("button", name="Mark this moment").click()
    ui.locator("#point-result").get_by_text("Not allowed (403)").wait_for()
    ui.get_by_label("Reason (recorded)").first.fill("viewer tries a backup")
    ui.get_by_role("button", name="Start backup").click()
    ui.locator("#backup-result").get_by_text("Not allowed (403)").wait_for()
    assert "Admin role" in ui.locator("#backup-result").inner_text()
    shot(page, "1440-viewer-403")
