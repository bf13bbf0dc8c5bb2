"""Drift repaired by the queue's checker is seen: in /metrics, /api/stats/ and on the
dashboard, whichever process repaired it (the repairs are rows, not process counters)."""

from __future__ import annotations

from django.test import Client

from jobs.invariants import repair
from jobs.models import FairShareAccount
from tests.dashboard.test_metrics import scrape
from tests.support.api_helpers import client_with_token

pytest_plugins = ["tests.support.dashboard_fixtures"]


def test_a_repair_is_counted_in_metrics_and_shown_on_the_dashboard(known_queue, staff_client):
    before = scrape(Client().get("/metrics").content.decode())
    assert ("zypher_queue_repairs_total", (("kind", "queued_count"),)) not in before

    FairShareAccount.objects.filter(user=known_queue.carol).update(queued_count=99)
    repaired = repair(repaired_by="dispatcher test")
    assert [v.kind for v in repaired] == ["queued_count"]

    after = scrape(Client().get("/metrics").content.decode())
    assert after[("zypher_queue_repairs_total", (("kind", "queued_count"),))] == 1

    stats = client_with_token(known_queue.staff).get("/api/stats/").json()
    assert stats["queue_repairs"]["last_hour"] == 1
    (latest,) = stats["queue_repairs"]["latest"]
    assert latest["subject"] == "account carol in cpu"
    assert latest["detail"] == "99 recorded, 3 counted"

    page = staff_client.get("/admin/dashboard/panels/").content.decode()
    assert 'id="queue-repairs">1<' in page
    assert "account carol in cpu: 99 recorded, 3 counted (by dispatcher test" in page
