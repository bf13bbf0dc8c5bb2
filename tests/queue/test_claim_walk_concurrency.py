"""The claim's walk over backlogged accounts under concurrent changes, on PostgreSQL.

zypher_claim reads the backlogged accounts one at a time, each the first past the last in
(virtual_time, id): a statement per step, each with a snapshot of its own. An account
whose virtual time moved back under the walk, past the accounts already read, would never
be read again. Whatever lands during the claim, the claim must pick what the policy picks
in some serial order of the transactions: here a requeue's refund moves a user to the
front while the walk waits on another user's account."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connections, transaction

from jobs.models import FairShareAccount, Job, JobStatus, User
from jobs.queue import ClaimedJob, JobSpec, claim_next, release_job, submit_jobs
from tests.support.processes import wait_until
from tests.support.sessions import sessions_waiting_on_locks

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def in_thread(
    work: list[object], function: Callable[..., object], *args: object
) -> threading.Thread:
    """`function(*args)` in a thread with its own connection; its answer (or what it
    raised) appended to `work`."""

    def body() -> None:
        try:
            work.append(function(*args))
        except BaseException as failure:  # noqa: BLE001 - reported to the test
            work.append(failure)
        finally:
            connections.close_all()

    thread = threading.Thread(target=body)
    thread.start()
    return thread


def test_a_user_refunded_by_a_requeue_during_the_walk_is_not_passed_over() -> None:
    a, b, c = (User.objects.create(username=name) for name in ("a", "b", "c"))
    submit_jobs(b, [JobSpec("noop", n) for n in range(2)])
    [a_job], _ = submit_jobs(a, [JobSpec("noop", 0)])
    submit_jobs(c, [JobSpec("noop", 0)])
    FairShareAccount.objects.filter(user=b).update(virtual_time=-1)
    running = claim_next("cpu", "first")
    assert running is not None and running.owner == "b"
    # b's running job was charged 4.5: its requeue moves b from 5 back to 0.5, ahead of a.
    Job.objects.filter(pk=running.id).update(charged_cost=4.5)
    for user, virtual_time in ((a, 1.0), (b, 5.0), (c, 10.0)):
        FairShareAccount.objects.filter(user=user).update(virtual_time=virtual_time)

    claimed: list[object] = []
    requeued: list[object] = []
    with transaction.atomic():
        # A cancel of a's only job, in flight: it holds a's account.
        FairShareAccount.objects.select_for_update(no_key=True).get(user=a)
        Job.objects.filter(pk=a_job.pk).update(status=JobStatus.CANCELLED)
        FairShareAccount.objects.filter(user=a).update(queued_count=0)
        claimer = in_thread(claimed, claim_next, "cpu", "second")
        wait_until(lambda: sessions_waiting_on_locks() == 1, 30, "the claim to wait on a")
        requeuer = in_thread(requeued, release_job, running.id, running.fencing_token, "lost")
        # The requeue either commits now or waits for the claim's pool lock.
        wait_until(lambda: bool(requeued) or sessions_waiting_on_locks() == 2, 30, "the requeue")
    claimer.join(60)
    requeuer.join(60)
    assert requeued == [JobStatus.QUEUED]
    [claim] = claimed
    assert isinstance(claim, ClaimedJob)
    # Cancel first (the claim waited for it), then requeue and claim in either order:
    # b (0.5 or 5) comes before c (10) both ways.
    assert claim.owner == "b", f"claimed {claim.owner}'s job; b was ahead of c throughout"
