"""The soak test, short: weighted users submit over HTTP while four devices run, then
every accepted job is reconciled and the shares of device time are checked.

20 users with weights 1..5 submit 600 jobs of 50 ms (each user its weight's share of
them) from three client processes to the real server; one dispatcher with four local
devices runs them on PostgreSQL. bench/soak.py is the long version (100 users, 10,000
jobs) with the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.models import Job, User
from tests.support.loadgen import Clients, plan_weighted_jobs
from tests.support.processes import wait_until
from tests.support.reconcile import fairness, load_job_rows, read_executions, reconcile

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

JOB_SECONDS = 0.05
DEVICES = 4


def test_every_accepted_job_ends_once_and_shares_follow_weights(
    gateway, start_dispatcher, subprocess_env
):
    weights = {f"soak{n:02d}": 1 + n % 5 for n in range(20)}
    User.objects.bulk_create(User(username=user, weight=w) for user, w in weights.items())
    jobs = plan_weighted_jobs(weights, total=600, seconds=JOB_SECONDS)
    # The backlog builds before the devices start, so every user is backlogged at once.
    report = Clients(gateway.url, jobs, processes=3, timeout=60).join()
    start_dispatcher(devices=DEVICES, name="soak")
    wait_until(
        lambda: not Job.objects.filter(status__in=["queued", "running"]).exists(),
        60,
        "the backlog to drain",
    )
    rows = load_job_rows()
    result = reconcile(
        report.accepted, rows, read_executions(Path(subprocess_env["ZYPHER_TEST_EXEC_LOG"]))
    )
    shares = fairness(rows)
    print(result.summary(), shares.summary())

    assert report.statuses == {"201": len(jobs)} and not report.protocol_errors
    assert result.problems(strict=True) == []
    assert result.by_status == {"succeeded": len(jobs)}
    assert result.executions == len(jobs)
    assert shares.window_seconds > 3
    # Start-time fair queueing over four devices: device seconds per unit of weight stay
    # within about one job per device of each other (the policy's C_max terms), so with
    # thousands of jobs' time in the window every share is within a few per cent.
    assert shares.max_normalised_gap < (DEVICES + 1) * JOB_SECONDS
    assert shares.worst is not None and shares.worst.relative_error < 0.1
