"""Writes to queue state from several database sessions at once, on PostgreSQL.

Each worker is a thread with its own connection (its own PostgreSQL backend), so the
statements really interleave; what is asserted is the outcome: counters equal to the
jobs, no deadlock, no error, the right jobs answered.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from psycopg import errors

from jobs.invariants import find_violations
from jobs.models import Job, JobStatus, User
from jobs.queue import (
    JobSpec,
    cancel_job,
    claim_next,
    finish_and_claim_next,
    finish_job,
    release_job,
    remove_user_from_queue,
    submit_jobs,
)
from tests.support.sessions import run_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def caused_by_deadlock(failure: BaseException) -> bool:
    while failure is not None:
        if isinstance(failure, errors.DeadlockDetected):
            return True
        failure = failure.__cause__ or failure.__context__  # type: ignore[assignment]
    return False


def test_removing_a_user_while_they_submit_strands_no_job() -> None:
    mallory = User.objects.create(username="mallory")
    stop = time.monotonic() + 4

    def submitter() -> None:
        while time.monotonic() < stop:
            submit_jobs(mallory, [JobSpec("noop", 1) for _ in range(random.randint(1, 5))])

    def operator() -> None:
        while time.monotonic() < stop:
            remove_user_from_queue(mallory, removed_by="op")
            time.sleep(random.uniform(0, 0.01))

    assert run_at_once([submitter, submitter, operator]) == []
    assert find_violations() == []
    queued = Job.objects.filter(owner=mallory, status=JobStatus.QUEUED).count()
    claimed = 0
    while claim_next("cpu", "d1") is not None:
        claimed += 1
    assert claimed == queued  # every queued job is reachable by a claim


def test_settling_and_claiming_from_several_sessions_never_deadlocks() -> None:
    users = [User.objects.create(username=f"u{i}", weight=1 + i % 3) for i in range(6)]
    for user in users:
        submit_jobs(user, [JobSpec("noop", i) for i in range(300)])
    stop = time.monotonic() + 5
    finished: list[int] = []

    def dispatcher(name: str, combined: bool) -> Callable[[], None]:
        def work() -> None:
            claim = claim_next("cpu", name)
            while claim is not None and time.monotonic() < stop:
                if combined:
                    accepted, claim = finish_and_claim_next(
                        claim, name, succeeded=True, duration=0.01, result=1
                    )
                else:
                    accepted = finish_job(claim, succeeded=True, duration=0.01, result=1)
                    claim = claim_next("cpu", name)
                if accepted:
                    finished.append(1)
            if claim is not None:
                release_job(claim.id, claim.fencing_token, "test over")

        return work

    def canceller() -> None:
        while time.monotonic() < stop:
            job = Job.objects.filter(status=JobStatus.QUEUED).order_by("?").first()
            if job is not None:
                cancel_job(job)

    def submitter() -> None:
        while time.monotonic() < stop:
            submit_jobs(random.choice(users), [JobSpec("noop", 0)])

    workers = [dispatcher(f"d{i}", combined=i % 2 == 0) for i in range(4)]
    failures = run_at_once([*workers, canceller, submitter])
    assert [f for f in failures if caused_by_deadlock(f)] == []
    assert failures == []
    assert len(finished) > 50
    assert find_violations() == []


def test_a_keyed_submit_inside_a_transaction_that_loses_the_race_gets_the_winners_job() -> None:
    alice = User.objects.create(username="alice")
    inserted = threading.Event()
    answers: dict[str, tuple[list[Job], bool]] = {}

    def first() -> None:
        with transaction.atomic():
            answers["first"] = submit_jobs(alice, [JobSpec("noop", 1)], idempotency_key="k")
            inserted.set()
            time.sleep(0.5)  # the second submit now waits on this insert's key

    def second() -> None:
        inserted.wait(10)
        with transaction.atomic():
            answers["second"] = submit_jobs(alice, [JobSpec("noop", 1)], idempotency_key="k")
            # The caller's transaction is still usable after losing the race.
            assert Job.objects.filter(owner=alice).count() == 1

    assert run_at_once([first, second]) == []
    (winner,), created = answers["first"]
    (answer,), created_again = answers["second"]
    assert created and not created_again
    assert answer.public_id == winner.public_id
    assert Job.objects.filter(owner=alice).count() == 1
    assert connection.vendor == "postgresql"
