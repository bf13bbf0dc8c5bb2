"""Sized devices: a claim finds the first user in fair order with a job that fits, however
many users ahead of it wait for bigger devices, and looks at each of them once."""

from __future__ import annotations

import pytest

from jobs.models import FairShareAccount, Job, User
from jobs.queue import JobSpec, claim_next, finish_and_claim_next, finish_job, submit_jobs

pytestmark = pytest.mark.django_db


def test_fifty_users_with_jobs_too_big_do_not_stop_a_small_device_serving_a_small_user():
    for index in range(50):
        submit_jobs(
            User.objects.create(username=f"big{index}"), [JobSpec("noop", 0, "qpu", size=10)]
        )
    small = User.objects.create(username="small")
    jobs, _ = submit_jobs(small, [JobSpec("noop", 1, "qpu", size=5)])

    claim = claim_next("qpu", "five-qubits", 5)

    assert claim is not None
    assert (claim.owner, claim.id) == ("small", jobs[0].pk)
    # The users skipped were not charged: they keep their place for a device that fits.
    big = FairShareAccount.objects.filter(user__username__startswith="big")
    assert {account.virtual_time for account in big} == {0.0}
    assert all(account.queued_count == 1 for account in big)


def test_a_settled_job_hands_the_device_to_the_next_user_whose_job_fits():
    for index in range(60):
        submit_jobs(
            User.objects.create(username=f"big{index}"), [JobSpec("noop", 0, "qpu", size=10)]
        )
    first = User.objects.create(username="first")
    second = User.objects.create(username="second")
    submit_jobs(first, [JobSpec("noop", 1, "qpu", size=5)])
    submit_jobs(second, [JobSpec("noop", 2, "qpu", size=3)])

    claim = claim_next("qpu", "d5", 5)
    assert claim is not None and claim.owner == "first"
    accepted, following = finish_and_claim_next(claim, "d5", 5, succeeded=True, duration=1.0)

    assert accepted
    assert following is not None and following.owner == "second"
    assert claim_next("qpu", "d5", 5) is None
    assert Job.objects.filter(status="queued", size=10).count() == 60


def test_within_a_user_the_head_that_fits_is_highest_priority_then_oldest():
    user = User.objects.create(username="mixed")
    specs = [
        JobSpec("noop", "big-urgent", "qpu", priority=9, size=10),
        JobSpec("noop", "old-4", "qpu", priority=0, size=4),
        JobSpec("noop", "new-2-high", "qpu", priority=3, size=2),
        JobSpec("noop", "new-5-high", "qpu", priority=3, size=5),
        JobSpec("noop", "old-0", "qpu", priority=0, size=0),
    ]
    submit_jobs(user, specs)
    order = []
    while (claim := claim_next("qpu", "d5", 5)) is not None:
        order.append(claim.input)
        finish_job(claim, succeeded=True, duration=1.0)
    assert order == ["new-2-high", "new-5-high", "old-4", "old-0"]
