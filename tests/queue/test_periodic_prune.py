"""ZYPHER_PRUNE_AFTER_SECONDS: a real `run_dispatcher` deletes old ended jobs in small
batches while it serves, and keeps queued jobs, recent ended ones (at least the
dashboard's hour) and the users' device seconds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.invariants import find_violations
from jobs.models import FairShareAccount, Job, JobStatus, User
from jobs.queue import JobSpec, claim_next, finish_job, submit_jobs
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


def ended_jobs(owner: User, count: int, finished_ago: timedelta) -> list[int]:
    """`count` jobs of `owner` run to the end by the queue's own functions, then dated back."""
    submit_jobs(owner, [JobSpec(kind="noop", input=1)] * count)
    ids = []
    for _ in range(count):
        claim = claim_next("cpu", "earlier-device")
        assert claim is not None
        assert finish_job(claim, succeeded=True, duration=2.0, error="")
        ids.append(claim.id)
    Job.objects.filter(pk__in=ids).update(finished_at=timezone.now() - finished_ago)
    return ids


def test_the_dispatcher_prunes_old_ended_jobs_while_it_serves(
    start_dispatcher, subprocess_env
) -> None:
    old_user = User.objects.create(username="old")
    old = ended_jobs(old_user, 11, timedelta(hours=2))
    within_the_hour = ended_jobs(old_user, 2, timedelta(minutes=30))
    # Queued for a pool no dispatcher serves, and as old as can be: never pruned.
    [waiting] = submit_jobs(old_user, [JobSpec(kind="noop", input=1, device_type="gpu")])[0]
    Job.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(days=400))
    served_before = dict(
        FairShareAccount.objects.filter(user=old_user).values_list("pool_id", "served_seconds")
    )

    start_dispatcher(
        devices=1,
        ZYPHER_PRUNE_AFTER_SECONDS="60",  # under the floor: an hour is kept anyway
        ZYPHER_PRUNE_INTERVAL_SECONDS="0.2",
        ZYPHER_PRUNE_BATCH_SIZE="3",
    )
    new_user = User.objects.create(username="new")
    served, _ = submit_jobs(new_user, [JobSpec(kind="noop", input=n) for n in range(5)])

    wait_until(lambda: not Job.objects.filter(pk__in=old).exists(), 60, "the old ended jobs to go")
    wait_until(
        lambda: Job.objects.filter(pk__in=[j.pk for j in served], status="succeeded").count() == 5,
        60,
        "the new jobs to be served",
    )
    assert set(Job.objects.filter(owner=old_user).values_list("pk", "status")) == {
        *((pk, JobStatus.SUCCEEDED) for pk in within_the_hour),
        (waiting.pk, JobStatus.QUEUED),
    }
    assert (
        dict(
            FairShareAccount.objects.filter(user=old_user).values_list("pool_id", "served_seconds")
        )
        == served_before
    )
    assert find_violations() == []
