"""Fixtures for the dashboard tests: a queue with known jobs, and staff to look at it.

Test modules load these with `pytest_plugins = ["tests.support.dashboard_fixtures"]`.

`known_queue` is a small history whose every figure is worked out by hand in
`KnownQueue`'s docstring; `M` is the start of the current minute, so that each job
ended in the past and the figures computed "at M" are exact.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from jobs import queue
from jobs.models import FairPool, FairShareAccount, Job, JobStatus, User
from jobs.monitoring import metrics


@dataclass
class KnownQueue:
    """Users alice (weight 1), bob (3), carol (1) and dave (2); at M:

    ended in the last hour (device, start → end relative to M in seconds, duration):
      1 alice limited_f succeeded  d1  -600    → -590      10
      2 bob   limited_f succeeded  d1  -589.3  → -569.3    20   (gap 0.7 s after 1)
      3 bob   limited_f failed     d1  -569.28 → -559.28   10   (gap 0.02 s after 2)
      4 bob   predict   succeeded  d2  -300    → -270      30
      5 alice predict   succeeded  d2  -269.995 → -259.995 10   (gap 0.005 s after 4)
      6 bob   limited_f succeeded  d2  -30     → -10       20   (gap 229.995 s after 5)
      7 alice limited_f succeeded  g1  -50     → -40       10   (gpu pool)
    outside the window: 8 dave limited_f succeeded d1, ended 2 h ago, 100 s.
    cancelled while queued: 9 carol limited_f, at -100 (no device, no duration).
    running: alice on d1 since -5 (cpu).
    queued: carol 3 on cpu (priorities 5, 0, 0; the oldest created at -120),
            bob 1 on gpu (priority -1, created at -30).
    """

    now: datetime
    alice: User
    bob: User
    carol: User
    dave: User
    staff: User
    running_job: Job
    carol_queued: list[Job]
    bob_queued: Job


def at(base: datetime, seconds: float) -> datetime:
    return base + timedelta(seconds=seconds)


def _make_user(username: str, weight: float, **fields: Any) -> User:
    user = User(username=username, weight=weight, **fields)
    user.set_unusable_password()
    user.save()
    Token.objects.create(user=user)
    return user


def _ended(
    owner: User,
    kind: str,
    status: str,
    device: str,
    start: datetime | None,
    end: datetime,
    pool: str = "cpu",
) -> Job:
    duration = (end - start).total_seconds() if start else None
    job = Job.objects.create(
        owner=owner,
        kind=kind,
        input=1,
        device_type=pool,
        status=status,
        device=device,
        started_at=start,
        finished_at=end,
        duration=duration,
        attempts=1 if start else 0,
    )
    Job.objects.filter(pk=job.pk).update(created_at=(start or end) - timedelta(seconds=1))
    return job


def _queued(owner: User, pool: str, priority: int, created: datetime) -> Job:
    job = Job.objects.create(
        owner=owner, kind="limited_f", input=1, device_type=pool, priority=priority
    )
    Job.objects.filter(pk=job.pk).update(created_at=created)
    return job


def build_known_queue(now: datetime) -> KnownQueue:
    """The history of `KnownQueue`, written straight to the tables (and counters)."""
    alice = _make_user("alice", 1)
    bob = _make_user("bob", 3)
    carol = _make_user("carol", 1)
    dave = _make_user("dave", 2)
    staff = _make_user("operator", 1, is_staff=True, is_superuser=True)
    staff.set_password("operator-password")
    staff.save()
    ok, failed = JobStatus.SUCCEEDED, JobStatus.FAILED
    _ended(alice, "limited_f", ok, "d1", at(now, -600), at(now, -590))
    _ended(bob, "limited_f", ok, "d1", at(now, -589.3), at(now, -569.3))
    _ended(bob, "limited_f", failed, "d1", at(now, -569.28), at(now, -559.28))
    _ended(bob, "predict", ok, "d2", at(now, -300), at(now, -270))
    _ended(alice, "predict", ok, "d2", at(now, -269.995), at(now, -259.995))
    _ended(bob, "limited_f", ok, "d2", at(now, -30), at(now, -10))
    _ended(alice, "limited_f", ok, "g1", at(now, -50), at(now, -40), pool="gpu")
    _ended(dave, "limited_f", ok, "d1", at(now, -7300), at(now, -7200))
    cancelled = _ended(carol, "limited_f", JobStatus.CANCELLED, "", None, at(now, -100))
    Job.objects.filter(pk=cancelled.pk).update(cancelled_by="carol")
    running = Job.objects.create(
        owner=alice,
        kind="limited_f",
        input=1,
        device_type="cpu",
        status=JobStatus.RUNNING,
        device="d1",
        started_at=at(now, -5),
        attempts=1,
        lease_expires_at=at(now, 600),
    )
    carol_queued = [
        _queued(carol, "cpu", 0, at(now, -120)),
        _queued(carol, "cpu", 0, at(now, -110)),
        _queued(carol, "cpu", 5, at(now, -100)),
    ]
    bob_queued = _queued(bob, "gpu", -1, at(now, -30))
    cpu = FairPool.objects.create(device_type="cpu", virtual_time=10, cost_estimate=12)
    gpu = FairPool.objects.create(device_type="gpu", virtual_time=5, cost_estimate=10)
    FairShareAccount.objects.create(
        pool=cpu, user=alice, virtual_time=20, running_count=1, served_seconds=20
    )
    FairShareAccount.objects.create(pool=cpu, user=bob, virtual_time=25, served_seconds=80)
    FairShareAccount.objects.create(pool=gpu, user=bob, virtual_time=5, queued_count=1)
    FairShareAccount.objects.create(pool=cpu, user=carol, virtual_time=10, queued_count=3)
    FairShareAccount.objects.create(pool=gpu, user=alice, virtual_time=10, served_seconds=10)
    FairShareAccount.objects.create(pool=cpu, user=dave, virtual_time=50, served_seconds=100)
    return KnownQueue(
        now=now,
        alice=alice,
        bob=bob,
        carol=carol,
        dave=dave,
        staff=staff,
        running_job=running,
        carol_queued=carol_queued,
        bob_queued=bob_queued,
    )


BUSY_WEIGHTS = {"ana": 4.0, "ben": 2.0, "chen": 1.0, "dora": 1.0, "eli": 2.0}
# How often each user's jobs won a device in the made-up history: not quite their weights,
# so that the fairness panel has something to show.
BUSY_DRAWS = {"ana": 3.0, "ben": 3.0, "chen": 1.0, "dora": 0.4, "eli": 2.0}
BUSY_DEVICES = [("cpu-0", "cpu"), ("cpu-1", "cpu"), ("cpu-2", "cpu"), ("gpu-0", "gpu")]


def build_busy_hour(now: datetime, seed: int = 7) -> User:
    """An hour of history on four devices (about 1,500 jobs), jobs running on each device
    and a backlog: what the dashboard looks like at work (the screenshot). Returns the
    staff user `operator` (password `operator-password`)."""
    rng = random.Random(seed)
    users = {name: _make_user(name, weight) for name, weight in BUSY_WEIGHTS.items()}
    staff = _make_user("operator", 1, is_staff=True, is_superuser=True)
    staff.set_password("operator-password")
    staff.save()
    names = list(BUSY_DRAWS)
    draws = [BUSY_DRAWS[name] for name in names]
    jobs: list[Job] = []
    running: dict[tuple[str, str], int] = {}
    for device, pool in BUSY_DEVICES:
        clock = now - timedelta(seconds=3600 - rng.uniform(0, 5))
        while True:
            duration = rng.uniform(2, 10) if pool == "cpu" else rng.uniform(6, 20)
            owner = rng.choices(names, weights=draws)[0]
            kind = rng.choice(["limited_f", "limited_f", "predict"])
            if clock + timedelta(seconds=duration) > now:
                jobs.append(
                    Job(
                        owner=users[owner],
                        kind=kind,
                        input=1,
                        device_type=pool,
                        device=device,
                        status=JobStatus.RUNNING,
                        started_at=clock,
                        attempts=1,
                        lease_expires_at=now + timedelta(seconds=30),
                    )
                )
                running[owner, pool] = running.get((owner, pool), 0) + 1
                break
            failed = rng.random() < 0.04
            jobs.append(
                Job(
                    owner=users[owner],
                    kind=kind,
                    input=1,
                    device_type=pool,
                    device=device,
                    status=JobStatus.FAILED if failed else JobStatus.SUCCEEDED,
                    started_at=clock,
                    finished_at=clock + timedelta(seconds=duration),
                    duration=duration,
                    attempts=1,
                )
            )
            gap = rng.expovariate(1 / 0.05)
            if rng.random() < 0.04:
                gap += rng.uniform(2, 40)  # the queue ran dry for a moment
            clock += timedelta(seconds=duration + gap)
    backlog = {("ana", "cpu"): 40, ("ben", "cpu"): 25, ("chen", "cpu"): 12, ("eli", "gpu"): 8}
    for (owner, pool), count in backlog.items():
        jobs += [
            Job(
                owner=users[owner],
                kind="limited_f",
                input=1,
                device_type=pool,
                priority=rng.choice([0, 0, 0, 5, -5]),
            )
            for _ in range(count)
        ]
    Job.objects.bulk_create(jobs)
    for index, (owner, _pool) in enumerate(backlog):
        Job.objects.filter(owner=users[owner], status=JobStatus.QUEUED).update(
            created_at=now - timedelta(seconds=90 * (index + 1))
        )
    pools = {pool: FairPool.objects.create(device_type=pool) for pool in ("cpu", "gpu")}
    for name, user in users.items():
        for pool_name, fair_pool in pools.items():
            FairShareAccount.objects.create(
                pool=fair_pool,
                user=user,
                queued_count=backlog.get((name, pool_name), 0),
                running_count=running.get((name, pool_name), 0),
            )
    return staff


@pytest.fixture(autouse=True)
def fresh_metrics_and_pools() -> Iterator[None]:
    """The metrics collector's settled tallies and the pool-id cache outlive a test's
    rolled-back database; start and end each test without them."""
    metrics.collector.forget()
    queue._pool_ids.clear()
    yield
    metrics.collector.forget()
    queue._pool_ids.clear()


@pytest.fixture
def known_queue(db: None) -> KnownQueue:
    return build_known_queue(timezone.now().replace(second=0, microsecond=0))


@pytest.fixture
def staff_client(known_queue: KnownQueue) -> Client:
    """A browser-like client logged in to the admin as the fixture's superuser."""
    client = Client()
    client.force_login(known_queue.staff)
    return client
