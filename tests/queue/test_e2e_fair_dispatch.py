"""End to end with real processes: gunicorn and run_dispatcher on the test database."""

from __future__ import annotations

import pytest
from django.utils import timezone

from jobs.models import Job
from tests.conftest import executions
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


def test_a_light_user_starts_within_two_dispatches_of_a_heavy_users_backlog(
    gateway, start_dispatcher, subprocess_env
):
    heavy = [
        {"user_id": "heavy", "kind": "sleep", "input": {"seconds": 0.02, "tag": f"h{i}"}}
        for i in range(200)
    ]
    response = gateway.post("/api/jobs/", heavy)
    assert response.status_code == 201, response.text
    start_dispatcher(devices=1)
    wait_until(
        lambda: Job.objects.filter(status="succeeded").count() >= 20,
        60,
        "the heavy backlog to start",
    )

    light = gateway.post(
        "/api/jobs/", {"user_id": "light", "kind": "sleep", "input": {"tag": "light"}}
    )
    assert light.status_code == 201, light.text
    # The 201 comes after the submit's commit: only from then on can a claim see the job
    # (created_at is taken before the commit, and a loaded server may take 100 ms to it).
    visible_by = timezone.now()
    light_id = light.json()["id"]
    job_url = light.json()["url"]
    wait_until(lambda: gateway.get(job_url).json()["status"] == "succeeded", 60, "the light job")

    light_job = Job.objects.get(public_id=light_id)
    heavy_started_between = Job.objects.filter(
        owner__username="heavy",
        started_at__gt=visible_by,
        started_at__lt=light_job.started_at,
    ).count()
    assert heavy_started_between <= 2

    wait_until(
        lambda: Job.objects.filter(status="succeeded").count() == 201, 120, "all jobs to finish"
    )
    body = gateway.get(job_url).json()
    assert body["result"] == {"slept": 0.05, "tag": "light"}
    assert (
        body["finished_at"] and body["started_at"] and body["device"].startswith("dispatcher0-cpu-")
    )
    assert sorted(executions(subprocess_env)) == sorted([f"h{i}" for i in range(200)] + ["light"])


def test_a_failing_handler_marks_its_job_failed_with_the_error(gateway, start_dispatcher):
    start_dispatcher(devices=1)
    job = gateway.post("/api/jobs/", {"user_id": "u", "kind": "boom", "input": 7}).json()
    body = wait_until(
        lambda: (b := gateway.get(job["url"]).json())["status"] in {"failed", "succeeded"} and b,
        30,
        "the job to end",
    )
    assert body["status"] == "failed"
    assert "ValueError: boom on 7" in body["error"]


def test_a_crashing_worker_is_replaced_and_its_job_fails_after_its_attempts(
    gateway, start_dispatcher
):
    dispatcher = start_dispatcher(devices=1, ZYPHER_MAX_ATTEMPTS="2")
    crash = gateway.post("/api/jobs/", {"user_id": "u", "kind": "crash", "input": 1}).json()
    after = gateway.post(
        "/api/jobs/", {"user_id": "u", "kind": "sleep", "input": {"tag": "after"}}
    ).json()
    body = wait_until(
        lambda: (b := gateway.get(crash["url"]).json())["status"] == "failed" and b,
        60,
        "the crash job to fail",
    )
    assert "exited with code 13" in body["error"] and body["attempts"] == 2
    wait_until(
        lambda: gateway.get(after["url"]).json()["status"] == "succeeded",
        60,
        "the next job on a new worker",
    )
    assert dispatcher.log_text().count("started, pid") >= 3  # the first worker and two replacements
