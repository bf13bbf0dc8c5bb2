"""/metrics within limits: per-pool figures from the fair-share counters (not a scan of the
queued jobs), every registered device listed, and an optional bearer token."""

from __future__ import annotations

from typing import Any

from django.test import Client

from devices.models import Device
from jobs.models import FairShareAccount
from tests.dashboard.test_metrics import scrape

pytest_plugins = ["tests.support.dashboard_fixtures"]


def test_pool_figures_are_the_fair_share_counters(known_queue) -> None:
    # The counters are what the queue keeps per user and pool; the jobs table holds 3
    # queued cpu jobs of carol, but her account says 7 (as after a bulk submit whose
    # rows a scrape need not read): /metrics reports the counters.
    FairShareAccount.objects.filter(user=known_queue.carol, pool__device_type="cpu").update(
        queued_count=7
    )
    samples = scrape(Client().get("/metrics").content.decode())
    assert samples[("zypher_queue_depth", (("pool", "cpu"),))] == 7
    assert samples[("zypher_queue_depth", (("pool", "gpu"),))] == 1
    assert samples[("zypher_jobs_running", (("pool", "cpu"),))] == 1
    assert samples[("zypher_jobs_running", (("pool", "gpu"),))] == 0
    assert samples[("zypher_pool_backlogged_users", (("pool", "cpu"),))] == 1
    # served seconds: alice 20 + bob 80 + dave 100 in cpu, alice 10 in gpu.
    assert samples[("zypher_pool_served_seconds_total", (("pool", "cpu"),))] == 200
    assert samples[("zypher_pool_served_seconds_total", (("pool", "gpu"),))] == 10


def test_every_registered_device_is_listed(known_queue) -> None:
    Device.objects.bulk_create(
        Device(name=f"qpu-{index:04d}", device_type="qpu", state=Device.State.READY)
        for index in range(450)
    )
    samples = scrape(Client().get("/metrics").content.decode())
    listed = {
        dict(labels)["device"]
        for (name, labels), _ in samples.items()
        if name == "zypher_device_state" and dict(labels)["pool"] == "qpu"
    }
    assert len(listed) == 450


def test_a_metrics_token_is_required_when_set(known_queue, settings: Any) -> None:
    settings.ZYPHER_METRICS_TOKEN = "scrape-secret-1"
    client = Client()
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Token scrape-secret-1"},
    ):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response["Content-Type"] == "application/json"
        assert "ZYPHER_METRICS_TOKEN" in response.json()["error"]
        assert response["WWW-Authenticate"].startswith("Bearer")
    response = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"})
    assert response.status_code == 200
    assert "zypher_queue_depth" in response.content.decode()


def test_metrics_stay_open_without_a_token(known_queue, settings: Any) -> None:
    settings.ZYPHER_METRICS_TOKEN = ""
    assert Client().get("/metrics").status_code == 200
