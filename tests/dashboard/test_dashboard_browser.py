"""The operators' dashboard in a real browser, served by the real server (gunicorn).

Log in to the admin, open the dashboard, submit jobs through the API and watch the queue
depth change without a reload, then remove the user from the queue through the
confirmation page and see their jobs cancelled and their next submit refused.

Needs Debian's Chromium at /usr/bin/chromium: skipped with the reason where it is
missing, a failure instead when ZYPHER_REQUIRE_BROWSER=1 (CI). With
ZYPHER_UPDATE_SCREENSHOT=1 the screenshot replaces docs/dashboard.png (the README's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus
from tests.support.processes import ServiceProcess, start_gateway

pytest_plugins = ["tests.support.dashboard_fixtures", "tests.support.browser"]

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.fixture
def dashboard_gateway(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """gunicorn on the test database, its dashboard refreshing the queue every second and
    the last hour's figures every three."""
    env = {
        **subprocess_env,
        "ZYPHER_DASHBOARD_REFRESH_SECONDS": "1",
        "ZYPHER_DASHBOARD_HOUR_REFRESH_SECONDS": "3",
    }
    process: ServiceProcess
    process, url = start_gateway(env, tmp_path)
    yield url
    process.stop()


def log_in(page: Any, login_url: str) -> None:
    """Log in to the admin as the fixtures' operator."""
    page.goto(login_url)
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-password")
    page.click("input[type=submit]")


def test_operator_watches_the_queue_and_removes_a_user(
    browser: Any, dashboard_gateway: str, tmp_path: Path
) -> None:
    import requests

    from tests.support.dashboard_fixtures import build_busy_hour

    url = dashboard_gateway
    build_busy_hour(timezone.now())
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        log_in(page, url + "/admin/login/?next=/admin/")
        page.click("#dashboard-link")
        page.wait_for_selector("#queue-total")
        before = int(page.text_content("#queue-total") or "")
        assert before == 85
        page.evaluate("window.sameDocument = true")
        refreshes = {"live": 0, "hour": 0}

        def count_refresh(request: Any) -> None:
            for part in refreshes:
                if request.url.endswith(f"/dashboard/panels/?part={part}"):
                    refreshes[part] += 1

        page.on("request", count_refresh)
        hour_stamp = page.text_content("#dashboard-hour-updated")

        submitted = requests.post(
            url + "/api/jobs/",
            json=[{"user_id": "zoe", "input": n} for n in range(3)],
            timeout=30,
        )
        assert submitted.status_code == 201
        page.wait_for_function(
            f"document.getElementById('queue-total').textContent.trim() === '{before + 3}'",
            timeout=15_000,
        )
        assert page.evaluate("window.sameDocument === true"), "the page was reloaded"
        assert page.locator('tr[data-user="zoe"] td.queued').text_content() == "3"
        # The last hour's figures come on their own, slower clock.
        page.wait_for_function(
            f"document.getElementById('dashboard-hour-updated').textContent !== '{hour_stamp}'",
            timeout=15_000,
        )
        assert page.locator("#dashboard-hour #jain-index").count() == 1
        assert 1 <= refreshes["hour"] < refreshes["live"], refreshes
        assert "stale" not in (page.get_attribute("#dashboard-status", "class") or "")

        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("ZYPHER_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")

        page.click('tr[data-user="zoe"] a.remove-from-queue')
        page.wait_for_selector("#confirm-remove")
        assert "zoe" in (page.text_content("#users-to-remove") or "")
        page.check("#id_deactivate")
        page.click("#confirm-remove")
        page.wait_for_selector("ul.messagelist")
        assert "Removed zoe from the queue: 3 job(s) cancelled; deactivated." in (
            page.text_content("ul.messagelist") or ""
        )
        assert page.text_content("#queue-total") == str(before)
        assert page.locator('tr[data-user="zoe"]').count() == 0
    finally:
        context.close()

    zoe_jobs = Job.objects.filter(owner__username="zoe")
    assert set(zoe_jobs.values_list("status", "cancelled_by")) == {
        (JobStatus.CANCELLED, "operator")
    }
    refused = requests.post(url + "/api/jobs/", json={"user_id": "zoe", "input": 9}, timeout=30)
    assert refused.status_code == 403
    assert refused.json() == {"error": "User 'zoe' is deactivated and cannot submit jobs."}


def test_the_status_goes_stale_while_a_part_fails_and_recovers(
    browser: Any, dashboard_gateway: str
) -> None:
    """One part answering 500 marks the status stale while the other keeps refreshing; a
    session that has expired (the panels redirect to the login page) is stale too, and
    neither part is replaced by the login form; both recover once the failure ends."""
    from tests.support.dashboard_fixtures import build_busy_hour

    url = dashboard_gateway
    build_busy_hour(timezone.now())
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    stale = "document.getElementById('dashboard-status').classList.contains('stale')"
    try:
        log_in(page, url + "/admin/login/?next=/admin/dashboard/")
        page.wait_for_selector("#queue-total")

        page.route("**/dashboard/panels/?part=hour", lambda route: route.fulfill(status=500))
        page.wait_for_function(stale, timeout=15_000)
        live_stamp = page.text_content("#dashboard-updated")
        page.wait_for_function(
            f"document.getElementById('dashboard-updated').textContent !== '{live_stamp}'",
            timeout=15_000,
        )
        assert page.evaluate(stale), "the hour part still fails: the status stays stale"
        page.unroute("**/dashboard/panels/?part=hour")
        page.wait_for_function(f"!({stale})", timeout=15_000)

        cookies = context.cookies()
        context.clear_cookies()
        page.wait_for_function(stale, timeout=15_000)
        page.wait_for_timeout(3_500)  # both parts have been fetched while logged out
        assert page.locator("#dashboard-panels #queue-total").count() == 1
        assert page.locator("#dashboard-hour #jain-index").count() == 1
        assert page.locator("#dashboard-panels form, #dashboard-hour form").count() == 0
        context.add_cookies(cookies)
        page.wait_for_function(f"!({stale})", timeout=15_000)
        assert page.locator("#dashboard-panels #queue-total").count() == 1
        assert errors == []
    finally:
        context.close()
