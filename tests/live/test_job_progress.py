# ruff: noqa: F811 - the fixtures imported from tests.support.device_fixtures are parameters here
"""Progress from handlers: the mock QPU behind a remote agent reports progress, which
reaches `GET /api/jobs/<id>/` while the job runs (a local worker's, `limited_f`, in
test_job_events.py); a report for a run that no longer holds the job writes nothing."""

from __future__ import annotations

import pytest

from jobs.models import Job, JobStatus, User
from jobs.progress import Progress, ProgressReporter, report_progress, reporting, save_progress
from jobs.queue import JobSpec, claim_next, release_job, submit_jobs
from tests.support.device_fixtures import (  # noqa: F401 - fixtures used by name
    device_env,
    device_gateway,
    device_settings,
    start_agent,
    start_device_dispatcher,
)
from tests.support.processes import wait_until


def progress_while_running(gateway, job_id):
    body = gateway.get(f"/api/jobs/{job_id}/").json()
    if body["status"] == "running" and body["progress"] is not None and body["progress"] < 1:
        return body
    return None


@pytest.mark.e2e
def test_the_mock_qpu_behind_an_agent_reports_progress_through_its_status(
    device_gateway, start_agent, start_device_dispatcher
):
    agent = start_agent("qpu-p", size=3, ZYPHER_QPU_SECONDS="4")
    agent.command("start")
    start_device_dispatcher()
    qpu_input = {"instructions": ["h 0"], "shots": 10}
    body = {"user_id": "bo", "kind": "qpu", "device_type": "qpu", "input": qpu_input}
    job_id = device_gateway.post("/api/jobs/", body).json()["id"]
    seen = wait_until(lambda: progress_while_running(device_gateway, job_id), 20, "progress")
    assert seen["progress_message"].startswith("shot batch") and seen["device"] == "qpu-p"
    done = wait_until(
        lambda: (
            (b := device_gateway.get(f"/api/jobs/{job_id}/").json())["status"] == "succeeded" and b
        ),
        30,
        "the job",
    )
    assert sum(done["result"]["counts"].values()) == 10


def running_job(db_user: User, device: str) -> Job:
    submit_jobs(db_user, [JobSpec(kind="noop", input=1, device_type="cpu")])
    claim = claim_next("cpu", device)
    assert claim is not None
    return Job.objects.get(pk=claim.id)


@pytest.mark.django_db(transaction=True)
def test_progress_is_written_only_for_the_run_that_holds_the_job():
    job = running_job(User.objects.create(username="cy"), "dev-1")
    key = (str(job.public_id), job.attempts, "dev-1")
    stale_token = (str(job.public_id), job.attempts - 1, "dev-1")
    other_device = (str(job.public_id), job.attempts, "dev-2")
    assert (
        save_progress({stale_token: Progress(0.9, "old run"), other_device: Progress(0.8, "x")})
        == 0
    )
    assert Job.objects.get(pk=job.pk).progress is None
    assert save_progress({key: Progress(0.5, "half")}) == 1
    assert Job.objects.values_list("progress", "progress_message").get(pk=job.pk) == (0.5, "half")
    # Requeued: the progress goes with the run, and the old run's late report writes nothing.
    assert release_job(job.pk, job.attempts, "device lost") == JobStatus.QUEUED
    assert Job.objects.values_list("progress", "progress_message").get(pk=job.pk) == (None, "")
    assert save_progress({key: Progress(0.7, "late")}) == 0
    assert Job.objects.get(pk=job.pk).progress is None


def test_report_progress_keeps_only_the_latest_value_normalised():
    reporter = ProgressReporter()
    report_progress(0.5, "outside a job: ignored")
    with reporting(reporter):
        for step in range(1000):
            report_progress(step / 1000, f"step {step}")
        report_progress(7, "x" * 1000 + "\x00")
    taken = reporter.take()
    assert taken is not None and taken.fraction == 1.0 and len(taken.message) == 200
    assert "\x00" not in taken.message
    assert reporter.take() is None  # unchanged since: nothing to send
    with reporting(reporter):
        report_progress(float("nan"))
    assert reporter.take() is None
