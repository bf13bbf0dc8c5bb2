"""GET /api/stats/: the dashboard's figures as JSON, for staff only."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.support.api_helpers import client_with_token

pytest_plugins = ["tests.support.dashboard_fixtures"]

STATS_URL = "/api/stats/"


def test_staff_read_the_figures_of_the_dashboard(known_queue) -> None:
    response = client_with_token(known_queue.staff).get(STATS_URL)
    assert response.status_code == 200
    body = response.json()
    assert {
        "queue_depth",
        "queued_by_user",
        "running",
        "throughput",
        "service_time",
        "shares",
        "fairness",
        "devices",
    } <= set(body)
    assert body["queue_depth"]["total"] == 4
    assert [(r["user"], r["queued"]) for r in body["queued_by_user"]] == [("carol", 3), ("bob", 1)]
    (running,) = body["running"]
    assert (running["device"], running["user"]) == ("d1", "alice")
    assert running["job"] == str(known_queue.running_job.public_id)
    assert sorted(body["throughput"]["per_minute"]) == ["1", "15", "5", "60"]
    assert len(body["throughput"]["last_hour"]) == 60
    # Every ended job of the fixture lies within the last hour whatever the clock says now.
    assert [(s["kind"], s["count"]) for s in body["service_time"]] == [
        ("limited_f", 5),
        ("predict", 2),
    ]
    shares = {(row["pool"], row["user"]): row for row in body["shares"]}
    for row in body["shares"]:
        assert {"user", "pool", "weight", "received_seconds", "entitled_seconds"} <= set(row)
        assert {"lag_seconds", "flagged"} <= set(row)
    assert shares["cpu", "bob"]["received_seconds"] == pytest.approx(80.0, abs=1e-3)
    # Measured at the real clock, seconds after the fixture's M: carol has waited beside
    # alice's running job a little longer (half of it is owed to her).
    carol = shares["cpu", "carol"]
    assert carol["lag_seconds"] >= 7.5 - 1e-3 and not carol["flagged"]
    assert [pool["pool"] for pool in body["fairness"]["pools"]] == ["cpu", "gpu"]
    assert body["fairness"]["pools"][0]["lag_bound_seconds"] >= 61.0 - 1e-3
    assert 0.6 < body["fairness"]["jain_index"] < 0.9
    assert body["fairness"]["idle_gap"]["counts"] == [1, 1, 0, 0, 1, 0, 0, 1]


def test_a_user_who_is_not_staff_is_refused(known_queue) -> None:
    response = client_with_token(known_queue.alice).get(STATS_URL)
    assert response.status_code == 403


def test_without_credentials_the_figures_are_not_shown(known_queue) -> None:
    response = APIClient().get(STATS_URL)
    assert response.status_code in (401, 403)
    assert "queue_depth" not in response.json()


LIVE_KEYS = {
    "generated_at",
    "queue_depth",
    "queued_by_user",
    "oldest_queued_age_seconds",
    "running",
    "devices",
    "waiting_for_a_device",
    "queue_repairs",
}
HOUR_KEYS = {"generated_at", "throughput", "service_time", "shares", "fairness"}


def test_each_part_answers_its_own_figures_alone(known_queue) -> None:
    client = client_with_token(known_queue.staff)
    whole = client.get(STATS_URL).json()
    live = client.get(STATS_URL, {"part": "live"}).json()
    hour = client.get(STATS_URL, {"part": "hour"}).json()
    assert set(live) == LIVE_KEYS and set(hour) == HOUR_KEYS
    assert set(whole) == LIVE_KEYS | HOUR_KEYS
    # The parts are the whole's own figures (those that do not move with the clock).
    for key in ("queue_depth", "devices", "queue_repairs", "waiting_for_a_device"):
        assert live[key] == whole[key]
    assert [(r["user"], r["queued"]) for r in live["queued_by_user"]] == [("carol", 3), ("bob", 1)]
    assert hour["service_time"] == whole["service_time"]
    received = {(r["pool"], r["user"]): r["received_seconds"] for r in hour["shares"]}
    # alice's job is running: her device time grows between the two calls.
    assert received == pytest.approx(
        {(r["pool"], r["user"]): r["received_seconds"] for r in whole["shares"]}, abs=5.0
    )
    assert received["cpu", "bob"] == pytest.approx(80.0, abs=1e-3)


@pytest.mark.parametrize("part", ["", "LIVE", "all", "live,hour"])
def test_an_unknown_part_is_a_400_that_names_the_parts(known_queue, part: str) -> None:
    response = client_with_token(known_queue.staff).get(STATS_URL, {"part": part})
    assert response.status_code == 400
    assert response.json() == {"part": [f"Unknown part {part!r}; valid: live, hour."]}
