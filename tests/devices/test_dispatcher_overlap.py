"""Two dispatchers drain one pool while each settles and claims for its devices at once
(issue 16: a dispatcher's settles run as tasks on two connections of their own, so one
device's settle-and-claim overlaps another's), and one of them is stopped mid-drain with
settles in flight. Real processes on PostgreSQL; what is asserted is what happened to the
jobs: each ran exactly once, all succeeded, and the queue's checker finds nothing."""

from __future__ import annotations

import signal

import pytest

from jobs.invariants import find_violations
from jobs.models import Job, JobStatus, User
from jobs.queue import JobSpec, submit_jobs
from tests.conftest import executions
from tests.support.processes import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

USERS = 5
JOBS_PER_USER = 80


def test_two_dispatchers_settling_at_once_run_every_job_exactly_once(
    start_dispatcher, subprocess_env
):
    tags = []
    for user_index in range(USERS):
        owner = User.objects.create(username=f"overlap{user_index}")
        specs = []
        for index in range(JOBS_PER_USER):
            tag = f"u{user_index}-{index}"
            tags.append(tag)
            specs.append(JobSpec(kind="sleep", input={"seconds": 0, "tag": tag}, device_type="cpu"))
        submit_jobs(owner, specs)
    first = start_dispatcher(devices=2, name="overlap-a")
    start_dispatcher(devices=2, name="overlap-b")
    wait_until(
        lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() >= len(tags) // 3,
        120,
        "a third of the jobs to run",
    )
    first.signal(signal.SIGTERM)  # settles in flight hand their next claims back
    assert first.process.wait(timeout=30) == 0, first.log_text()[-2000:]
    wait_until(
        lambda: not Job.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).exists(),
        180,
        "the other dispatcher to drain the queue",
    )

    assert sorted(executions(subprocess_env)) == sorted(tags)  # none twice, none lost
    assert Job.objects.filter(status=JobStatus.SUCCEEDED).count() == len(tags)
    assert find_violations() == []
