"""Sized claims from several sessions at once, on PostgreSQL: a claim locks only the user
it serves (the users it passes over are read, not locked), so the outcome to check is
that no job is handed out twice or to a device too small, no deadlock, counters equal
to the jobs, and every queued job still reachable by a device big enough."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from jobs.invariants import find_violations
from jobs.models import Job, JobStatus, User
from jobs.queue import (
    ClaimedJob,
    JobSpec,
    cancel_job,
    claim_next,
    finish_and_claim_next,
    finish_job,
    submit_jobs,
)
from tests.support.sessions import run_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_sized_devices_claiming_beside_submits_and_cancels_hand_each_job_out_once() -> None:
    users = [User.objects.create(username=f"u{i}", weight=1 + i % 3) for i in range(8)]
    for index, user in enumerate(users):
        # Half the users first queue only jobs no device here can run (size 9).
        size = 9 if index % 2 else 2
        submit_jobs(user, [JobSpec("noop", 0, "qpu", size=size) for _ in range(40)])
    stop = time.monotonic() + 4
    handed_out: list[tuple[int, int, int]] = []  # (job id, token, device size)

    def dispatcher(name: str, capacity: int) -> Callable[[], None]:
        def work() -> None:
            claim: ClaimedJob | None = claim_next("qpu", name, capacity)
            while time.monotonic() < stop:
                if claim is None:
                    claim = claim_next("qpu", name, capacity)
                    continue
                handed_out.append((claim.id, claim.fencing_token, capacity))
                if random.random() < 0.5:
                    _, claim = finish_and_claim_next(
                        claim, name, capacity, succeeded=True, duration=0.01
                    )
                else:
                    finish_job(claim, succeeded=True, duration=0.01)
                    claim = None
            if claim is not None:
                handed_out.append((claim.id, claim.fencing_token, capacity))
                finish_job(claim, succeeded=True, duration=0.01)

        return work

    def submitter() -> None:
        while time.monotonic() < stop:
            sizes = [random.choice([0, 3, 5, 9]) for _ in range(random.randint(1, 4))]
            submit_jobs(random.choice(users), [JobSpec("noop", 0, "qpu", size=s) for s in sizes])

    def canceller() -> None:
        while time.monotonic() < stop:
            job = Job.objects.filter(status=JobStatus.QUEUED).order_by("?").first()
            if job is not None:
                cancel_job(job)

    workers = [dispatcher(f"d{i}", capacity) for i, capacity in enumerate([3, 5, 5, 8])]
    assert run_at_once([*workers, submitter, canceller]) == []

    assert len(handed_out) > 20
    assert len({(job, token) for job, token, _ in handed_out}) == len(handed_out)
    sizes = dict(Job.objects.values_list("id", "size"))
    assert all(sizes[job] <= capacity for job, _, capacity in handed_out)
    assert find_violations() == []
    fitting = Job.objects.filter(status=JobStatus.QUEUED, size__lte=8).count()
    reached = 0
    while (claim := claim_next("qpu", "last", 8)) is not None:
        finish_job(claim, succeeded=True, duration=0.01)
        reached += 1
    assert reached == fitting
    assert Job.objects.filter(status=JobStatus.QUEUED).exclude(size=9).count() == 0


def test_a_user_parked_with_a_job_too_big_wakes_the_dispatchers_when_it_queues_one_that_fits():
    """Its counter was not zero, so "became backlogged" missed it: the small devices,
    idle, would have waited for their fallback poll."""
    import psycopg

    from jobs.notifications import listener_conninfo

    parked = User.objects.create(username="parked")
    submit_jobs(parked, [JobSpec("noop", "too big", "qpu", size=10)])
    with psycopg.connect(autocommit=True, **listener_conninfo()) as listener:
        listener.execute("LISTEN zypher_work")
        submit_jobs(parked, [JobSpec("noop", "fits", "qpu", size=1)])
        # Delivered at the submit's commit, which has happened: the timeout only stops
        # a failing run from hanging.
        woken = [note.payload for note in listener.notifies(timeout=10, stop_after=1)]
    assert woken == ["qpu"]


def test_a_claim_that_found_a_users_only_fitting_job_serves_the_next_user_once_it_is_cancelled():
    """The claim probes `first` without a lock and sees a job that fits; a cancel holds
    `first`'s account and cancels that job before the claim gets the lock. The claim
    must look again under the lock: `first` still has a job queued (too big), so only
    the re-check stops it handing out the cancelled job or skipping `second`."""
    from django.db import transaction

    from jobs.models import FairShareAccount
    from jobs.queue import _lock_accounts
    from tests.support.sessions import sessions_waiting_on_locks

    first = User.objects.create(username="first")
    second = User.objects.create(username="second")
    (fitting, too_big), _ = submit_jobs(
        first, [JobSpec("noop", "fits", "qpu", size=2), JobSpec("noop", "big", "qpu", size=9)]
    )
    (others,), _ = submit_jobs(second, [JobSpec("noop", "second's", "qpu", size=2)])
    claims: list[ClaimedJob | None] = []
    account_held = threading.Event()

    def canceller() -> None:
        with transaction.atomic():
            _lock_accounts(FairShareAccount.objects.filter(user=first))
            account_held.set()
            while sessions_waiting_on_locks() < 1:  # the claim waits for this account
                time.sleep(0.01)
            assert cancel_job(fitting)

    def dispatcher() -> None:
        assert Job.objects.filter(pk=others.pk).exists()  # its session is open before
        assert account_held.wait(timeout=60)
        claims.append(claim_next("qpu", "d5", 5))

    assert run_at_once([canceller, dispatcher]) == []

    (claim,) = claims
    assert claim is not None and claim.id == others.pk
    assert Job.objects.get(pk=fitting.pk).status == JobStatus.CANCELLED
    assert Job.objects.get(pk=too_big.pk).status == JobStatus.QUEUED
    assert find_violations() == []
