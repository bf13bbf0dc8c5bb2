"""GET /metrics: Prometheus text read from the database at scrape time."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import Job, JobStatus
from jobs.monitoring import metrics

pytest_plugins = ["tests.support.dashboard_fixtures"]


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_are_prometheus_text_with_the_queue_and_the_ended_jobs(known_queue) -> None:
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = scrape(response.content.decode())
    assert samples[("zypher_queue_depth", (("pool", "cpu"),))] == 3
    assert samples[("zypher_queue_depth", (("pool", "gpu"),))] == 1
    assert samples[("zypher_jobs_running", (("pool", "cpu"),))] == 1
    assert samples[("zypher_oldest_queued_age_seconds", ())] >= 120
    assert (
        samples[("zypher_device_state", (("device", "d1"), ("pool", "cpu"), ("state", "busy")))]
        == 1
    )
    # All ended jobs, however old: dave's included, and carol's cancelled one.
    assert samples[("zypher_jobs_total", (("kind", "limited_f"), ("status", "succeeded")))] == 5
    assert samples[("zypher_jobs_total", (("kind", "limited_f"), ("status", "failed")))] == 1
    assert samples[("zypher_jobs_total", (("kind", "limited_f"), ("status", "cancelled")))] == 1
    assert samples[("zypher_jobs_total", (("kind", "predict"), ("status", "succeeded")))] == 2
    # Service time of jobs that ran to an end: limited_f 10, 20, 10, 20, 10, 100.
    histogram = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "zypher_job_service_seconds_bucket" and ("kind", "limited_f") in labels
    }
    le = {dict(labels)["le"]: value for labels, value in histogram.items()}
    assert (le["5.0"], le["10.0"], le["30.0"], le["60.0"], le["120.0"], le["+Inf"]) == (
        0,
        3,
        5,
        5,
        6,
        6,
    )
    assert samples[("zypher_job_service_seconds_sum", (("kind", "limited_f"),))] == 170
    assert samples[("zypher_job_service_seconds_count", (("kind", "predict"),))] == 2


def test_ended_jobs_are_counted_once_as_scrapes_move_the_settled_horizon(known_queue) -> None:
    now = timezone.now()
    collector = metrics.JobsCollector()
    key = ("limited_f", JobStatus.SUCCEEDED)
    assert collector.ended_jobs(now)[key].count == 5
    # A job ending now is in the recent slice; after later scrapes, in the settled part.
    Job.objects.create(
        owner=known_queue.bob,
        kind="limited_f",
        status=JobStatus.SUCCEEDED,
        started_at=now - timedelta(seconds=3),
        finished_at=now,
        duration=3.0,
    )
    for later in (0, 30, 61, 200, 400):
        tally = collector.ended_jobs(now + timedelta(seconds=later))[key]
        assert (tally.count, tally.seconds) == (6, 10 + 20 + 20 + 10 + 100 + 3.0), later
    full = metrics.tally_ended_jobs(None, None)[key]
    assert collector.ended_jobs(now + timedelta(seconds=500))[key] == full


def test_an_openmetrics_scraper_gets_openmetrics(known_queue) -> None:
    response = Client().get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().endswith("# EOF\n")


@pytest.mark.e2e
def test_every_gunicorn_worker_answers_the_same_numbers(gateway) -> None:
    for user, count in (("erin", 3), ("frank", 2)):
        body = [{"user_id": user, "input": n} for n in range(count)]
        assert gateway.post("/api/jobs/", body).status_code == 201
    depths = set()
    for _ in range(12):  # gunicorn.conf.py runs 2 workers: both answer some of these
        samples = scrape(requests.get(gateway.url + "/metrics", timeout=10).text)
        depths.add(samples[("zypher_queue_depth", (("pool", "cpu"),))])
    assert depths == {5}
