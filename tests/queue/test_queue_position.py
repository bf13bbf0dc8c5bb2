"""`queue_position`: the owner's jobs ahead exactly, plus what each other backlogged user
is expected to be dispatched before this job starts, in two queries."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.models import FairPool, FairShareAccount, Job, User
from jobs.queue import JobSpec, queue_position, submit_jobs

pytestmark = pytest.mark.django_db


def queue(name: str, weight: float, count: int, *, priority: int = 0) -> list[Job]:
    user, _ = User.objects.get_or_create(username=name, defaults={"weight": weight})
    jobs, _ = submit_jobs(user, [JobSpec("noop", n, "cpu", priority) for n in range(count)])
    return jobs


def at_virtual_time(name: str, virtual_time: float) -> None:
    FairShareAccount.objects.filter(user__username=name).update(virtual_time=virtual_time)


def test_the_position_adds_each_other_users_dispatches_until_the_jobs_virtual_start(
    django_assert_num_queries: Any,
) -> None:
    queue("carol", 1, 5)  # her account is older than alice's: she wins a tie
    mine = queue("alice", 1, 4)[3]  # 3 of her own ahead at its priority ...
    queue("alice", 1, 1, priority=5)  # ... and 1 above it
    queue("bob", 2, 10)
    queue("dave", 1, 3)
    queue("erin", 0.5, 2)
    queue("frank", 1, 3)
    FairPool.objects.filter(device_type="cpu").update(cost_estimate=2.0)
    for name, virtual_time in [
        ("alice", 10), ("bob", 12), ("carol", 18), ("dave", 19), ("erin", 5), ("frank", 18)
    ]:  # fmt: skip
        at_virtual_time(name, virtual_time)

    with django_assert_num_queries(2):
        position = queue_position(mine)

    # alice starts it at 10 + 4 jobs x 2 s / weight 1 = 18. Bob needs ceil((18 - 12) x 2 / 2)
    # = 6 of his 10; carol ties and wins it: 1; dave is past 18: 0; erin needs ceil(13 x
    # 0.5 / 2) = 4 but has 2; frank ties and loses it: 0.
    assert position == 4 + 6 + 1 + 0 + 2 + 0


def test_a_job_no_longer_queued_has_no_position() -> None:
    job = queue("alice", 1, 1)[0]
    Job.objects.filter(pk=job.pk).update(status="cancelled")
    job.refresh_from_db()

    assert queue_position(job) is None
