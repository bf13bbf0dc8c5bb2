"""A claim or a settle that waits for a lock held by an open transaction elsewhere is not
silent: the dispatcher logs it every ZYPHER_SLOW_CALL_SECONDS, naming its session, whose
blocker is the transaction holding the pool's row; the work goes on once it ends."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from django.db import connection

from jobs.models import Job, JobStatus, User
from jobs.notifications import listener_conninfo
from jobs.queue import JobSpec, submit_jobs
from tests.support.processes import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

WAITED = re.compile(r"(\w+)\(.*\) has waited (\d+)s for the database \(its session: pid (\d+);")
POOL_ROW = "SELECT 1 FROM jobs_fairpool WHERE device_type = 'cpu' FOR UPDATE"


@contextmanager
def pool_row_held() -> Iterator[int]:
    """An operator's session holding the cpu pool's row in an open transaction: its pid."""
    operator = psycopg.connect(**listener_conninfo())
    try:
        operator.execute(POOL_ROW)
        yield operator.info.backend_pid
    finally:
        operator.rollback()
        operator.close()


def succeeds(job: Job, what: str) -> None:
    wait_until(lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED, 30, what)


def blockers_of(pid: int) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_blocking_pids(%s)", [pid])
        row = cursor.fetchone()
    assert row is not None
    return list(row[0])


def test_a_claim_stalled_by_an_open_transaction_is_logged_with_its_session(start_dispatcher):
    [job], _ = submit_jobs(User.objects.create(username="held"), [JobSpec("sleep", {"seconds": 0})])
    with pool_row_held() as operator_pid:
        dispatcher = start_dispatcher(devices=1, ZYPHER_SLOW_CALL_SECONDS="1")

        wait_until(lambda: WAITED.search(dispatcher.log_text()), 30, "the stalled call's warning")
        name, _waited, pid = WAITED.search(dispatcher.log_text()).groups()  # type: ignore[union-attr]
        assert name == "claim_next"
        assert operator_pid in blockers_of(int(pid))
        # Again while it goes on, with the time it has waited.
        wait_until(
            lambda: any(int(found[1]) >= 2 for found in WAITED.findall(dispatcher.log_text())),
            30,
            "a second warning",
        )
        assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
    succeeds(job, "the job to run once the transaction ended")


def test_a_settle_stalled_by_an_open_transaction_is_logged_with_its_session(start_dispatcher):
    """On PostgreSQL a device's settle-and-claim runs on the loop's own connections."""
    user = User.objects.create(username="settled")
    [job], _ = submit_jobs(user, [JobSpec("sleep", {"seconds": 1})])
    # A lease well past the test's waits: the settle is not given up meanwhile.
    dispatcher = start_dispatcher(
        devices=1, ZYPHER_SLOW_CALL_SECONDS="1", ZYPHER_LEASE_SECONDS="60"
    )
    wait_until(
        lambda: Job.objects.get(pk=job.pk).status == JobStatus.RUNNING, 30, "the job to start"
    )
    with pool_row_held() as operator_pid:

        def settle_warned() -> list[tuple[str, str, str]]:
            return [
                w for w in WAITED.findall(dispatcher.log_text()) if w[0] == "finish_and_claim_next"
            ]

        wait_until(settle_warned, 30, "the stalled settle's warning")
        assert operator_pid in blockers_of(int(settle_warned()[0][2]))
        assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING
    succeeds(job, "the settle to end once the transaction ended")
