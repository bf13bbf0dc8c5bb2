"""A NOTIFY handled while a settle's claim is in flight is not undone by that claim
coming back empty (issue 16: the settle used to mark the pool empty after the wake had
cleared it, and the new job waited for ZYPHER_IDLE_POLL_SECONDS).

The interleaving is forced: ZYPHER_TEST_CLAIM_GATE makes the dispatcher's database
thread, after a claim that found nothing and before it hands that answer back to the
loop, wait for a PostgreSQL advisory lock the test holds. The job is submitted and its
NOTIFY seen handled (the dispatcher's debug line) while the claim is held; the idle poll
is an hour, far past the test's timeouts, so only the wake can start the job."""

from __future__ import annotations

import pytest
from django.db import connection

from jobs.models import Job, JobStatus, User
from jobs.queue import JobSpec, submit_jobs
from tests.support.processes import wait_until
from tests.support.sessions import sessions_waiting_on_locks

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

GATE = 160016  # the advisory lock's key


def test_a_wake_while_an_empty_claim_is_in_flight_starts_the_new_job(start_dispatcher):
    user = User.objects.create(username="waker")
    [first], _ = submit_jobs(user, [JobSpec("sleep", {"seconds": 0, "tag": "first"})])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [GATE])
    try:
        dispatcher = start_dispatcher(
            devices=1,
            name="gated",
            ZYPHER_IDLE_POLL_SECONDS="3600",
            ZYPHER_TEST_CLAIM_GATE=str(GATE),
            ZYPHER_LOG_LEVEL="DEBUG",
        )
        # The first job runs; its settle-and-claim finds nothing and is held.
        wait_until(lambda: sessions_waiting_on_locks() == 1, 30, "the empty claim to be held")
        assert Job.objects.get(pk=first.pk).status == JobStatus.SUCCEEDED
        wakes = dispatcher.log_text().count("woken")
        [second], _ = submit_jobs(user, [JobSpec("sleep", {"seconds": 0, "tag": "second"})])
        wait_until(
            lambda: dispatcher.log_text().count("woken") > wakes, 30, "the NOTIFY to be handled"
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [GATE])
    wait_until(
        lambda: Job.objects.get(pk=second.pk).status == JobStatus.SUCCEEDED,
        30,
        "the job submitted during the empty claim to run",
    )
