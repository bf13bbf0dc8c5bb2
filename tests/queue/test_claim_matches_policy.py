"""The database claim hands out jobs in the same order as the reference policy."""

from __future__ import annotations

import random

import pytest
from django.conf import settings

from jobs.fairshare import Dispatch, FairQueue
from jobs.models import FairShareAccount, Job, User
from jobs.queue import (
    ClaimedJob,
    JobSpec,
    cancel_job,
    claim_next,
    finish_and_claim_next,
    finish_job,
    release_job,
    submit_jobs,
)

pytestmark = pytest.mark.django_db


def run_trace(seed: int, steps: int = 300, capacities: tuple[int | None, ...] = (None,)) -> None:
    """Random submits, claims, settles, requeues and cancels, through the database and the
    model side by side. With `capacities`, each claim is for a device of one of them and
    jobs need sizes 0..9 (some fit no device)."""
    rng = random.Random(seed)
    sized = capacities != (None,)
    users = [
        User.objects.create(username=f"u{i}", weight=rng.choice([1, 2, 3, 5, 8])) for i in range(8)
    ]
    model: FairQueue[int] = FairQueue()
    running: dict[int, tuple[ClaimedJob, Dispatch[int]]] = {}  # job id -> (claim, dispatch)
    for _ in range(steps):
        action = rng.random()
        if action < 0.45:
            user = rng.choice(users)
            priority = rng.choice([-5, 0, 0, 0, 3])
            size = rng.randint(0, 9) if sized else 0
            jobs, _ = submit_jobs(user, [JobSpec("noop", None, "cpu", priority, size)])
            model.push(user.username, jobs[0].pk, weight=user.weight, priority=priority, size=size)
        elif action < 0.75 and len(running) < 3:
            capacity = rng.choice(capacities)
            claim = claim_next("cpu", "device", capacity)
            if claim is None:
                assert model.next_user(capacity) is None
                continue
            dispatch = model.pop(cost=claim.charged_cost, capacity=capacity)
            assert (dispatch.user, dispatch.item) == (claim.owner, claim.id)
            running[claim.id] = (claim, dispatch)
        elif action < 0.95 and running:
            job_id = rng.choice(sorted(running))
            claim, dispatch = running.pop(job_id)
            # A requeue only while attempts are left: the model has no failing for good.
            if rng.random() < 0.1 and claim.fencing_token < settings.ZYPHER_MAX_ATTEMPTS:
                assert release_job(claim.id, claim.fencing_token, "test") == "queued"
                model.requeue(dispatch)
            elif rng.random() < 0.5:
                actual = rng.choice([0.1, 1.0, 3.0, 10.0])
                assert finish_job(claim, succeeded=True, duration=actual)
                model.settle(dispatch, actual)
            else:  # settle and claim the device's next job in one transaction
                actual = rng.choice([0.1, 1.0, 3.0, 10.0])
                capacity = rng.choice(capacities)
                accepted, following = finish_and_claim_next(
                    claim, "device", capacity, succeeded=True, duration=actual
                )
                assert accepted
                model.settle(dispatch, actual)
                if following is None:
                    assert model.next_user(capacity) is None
                else:
                    dispatch = model.pop(cost=following.charged_cost, capacity=capacity)
                    assert (dispatch.user, dispatch.item) == (following.owner, following.id)
                    running[following.id] = (following, dispatch)
        elif action >= 0.95:
            queued = list(Job.objects.filter(status="queued"))
            if queued:
                job = rng.choice(queued)
                # The model cancels by removing; mirror it only for a user's whole queue.
                for other in Job.objects.filter(owner=job.owner, status="queued"):
                    cancel_job(other)
                model.remove_user(job.owner.username)
        for account in FairShareAccount.objects.select_related("user"):
            assert account.virtual_time == pytest.approx(
                model.user_virtual_time(account.user.username)
            )
            assert account.queued_count == model.queued(account.user.username)


@pytest.mark.parametrize("seed", range(4))
def test_database_claims_follow_the_reference_model_on_random_traces(seed):
    run_trace(seed)


@pytest.mark.parametrize("seed", range(2))
def test_sized_database_claims_follow_the_reference_model_on_random_traces(seed):
    run_trace(seed, steps=250, capacities=(3, 5, 8, None))


def test_a_single_users_jobs_come_out_by_priority_then_age():
    user = User.objects.create(username="solo")
    priorities = [0, 5, -3, 5, 0, 100, -100]
    jobs, _ = submit_jobs(user, [JobSpec("noop", i, "cpu", p) for i, p in enumerate(priorities)])
    order = []
    while (claim := claim_next("cpu", "d")) is not None:
        order.append(claim.input)
        finish_job(claim, succeeded=True, duration=1.0)
    expected = sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))
    assert order == expected


def test_a_stale_claim_cannot_settle_after_its_job_was_requeued_and_claimed_again():
    user = User.objects.create(username="fenced")
    submit_jobs(user, [JobSpec("noop", 1)])
    first = claim_next("cpu", "d1")
    assert first is not None
    assert release_job(first.id, first.fencing_token, "lease expired") == "queued"
    second = claim_next("cpu", "d2")
    assert second is not None
    assert second.id == first.id and second.fencing_token == first.fencing_token + 1
    assert not finish_job(first, succeeded=True, duration=1.0, result="late")
    assert finish_job(second, succeeded=True, duration=1.0, result="ok")
    job = Job.objects.get(pk=first.id)
    assert (job.status, job.result, job.device) == ("succeeded", "ok", "d2")
