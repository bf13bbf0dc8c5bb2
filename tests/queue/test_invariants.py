"""The queue's invariants (`jobs.invariants`): drift is found, named and repaired under
the right locks, by `check_queue` and by the claim; leases nobody reaps are released; a
pool's virtual time going back is seen; the reaper and remove-from-queue keep the books."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs.invariants import PoolClock, find_violations, repair
from jobs.models import FairPool, FairShareAccount, Job, JobStatus, QueueRepair, User
from jobs.queue import (
    JobSpec,
    claim_next,
    pool_id_for,
    release_job,
    remove_user_from_queue,
    submit_jobs,
)

pytestmark = pytest.mark.django_db(transaction=True)


def make_user(name: str, weight: float = 1.0) -> User:
    return User.objects.create(username=name, weight=weight)


def account(user: User, device_type: str = "cpu") -> FairShareAccount:
    return FairShareAccount.objects.get(user=user, pool_id=pool_id_for(device_type))


def run_check_queue(*args: str) -> tuple[int, str]:
    """`manage.py check_queue` in process: its exit status and what it printed."""
    from io import StringIO

    out = StringIO()
    try:
        call_command("check_queue", *args, stdout=out, stderr=out)
    except SystemExit as exit:
        return int(exit.code or 0), out.getvalue()
    return 0, out.getvalue()


def test_a_sound_queue_has_no_violations() -> None:
    alice = make_user("alice")
    submit_jobs(alice, [JobSpec("noop", 1), JobSpec("noop", 2)])
    claim_next("cpu", "d1")
    assert find_violations() == []
    assert run_check_queue() == (0, "queue invariants hold\n")


def test_check_queue_names_drifted_counters_and_exits_1_until_repaired() -> None:
    alice, bob = make_user("alice"), make_user("bob")
    submit_jobs(alice, [JobSpec("noop", i) for i in range(3)])
    submit_jobs(bob, [JobSpec("noop", 1)])
    claim_next("cpu", "d1")
    # Drift as an edit behind the queue's back would leave it.
    FairShareAccount.objects.filter(user=alice).update(queued_count=0, running_count=5)

    status, printed = run_check_queue()
    assert status == 1
    assert "queued_count: account alice in cpu: 0 recorded, 2 counted" in printed
    assert "running_count: account alice in cpu: 5 recorded, 1 counted" in printed
    assert "bob" not in printed

    status, printed = run_check_queue("--repair")
    assert status == 0, printed
    assert "repaired queued_count: account alice in cpu" in printed
    assert (account(alice).queued_count, account(alice).running_count) == (2, 1)
    repairs = QueueRepair.objects.values_list("kind", "subject", "repaired_by")
    assert sorted(repairs) == [
        ("queued_count", "account alice in cpu", "check_queue"),
        ("running_count", "account alice in cpu", "check_queue"),
    ]
    assert run_check_queue()[0] == 0


def test_queued_jobs_without_an_account_are_found_and_given_one() -> None:
    alice = make_user("alice")
    submit_jobs(alice, [JobSpec("noop", 1)])
    FairShareAccount.objects.filter(user=alice).delete()
    assert [v.kind for v in find_violations()] == ["missing_account"]
    repair(repaired_by="test")
    assert account(alice).queued_count == 1
    assert claim_next("cpu", "d1") is not None  # no longer stranded


def test_the_claim_repairs_an_over_count_and_records_it() -> None:
    alice, bob = make_user("alice"), make_user("bob")
    submit_jobs(bob, [JobSpec("noop", 1)])
    submit_jobs(alice, [JobSpec("noop", 1)])
    Job.objects.filter(owner=alice).update(status=JobStatus.CANCELLED)  # count now says 1
    FairShareAccount.objects.filter(user=alice).update(virtual_time=-1)  # alice first
    claim = claim_next("cpu", "d1")
    assert claim is not None and claim.owner == "bob"
    assert account(alice).queued_count == 0
    assert list(QueueRepair.objects.values_list("kind", "repaired_by")) == [
        ("queued_count", "claim")
    ]


def test_a_running_job_whose_lease_nobody_reaps_is_released_by_the_repair() -> None:
    alice = make_user("alice")
    (job,), _ = submit_jobs(alice, [JobSpec("noop", 1)])
    claim = claim_next("cpu", "d1")
    assert claim is not None
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(minutes=5))
    assert [v.kind for v in find_violations()] == ["lease"]
    repaired = repair(repaired_by="test")
    assert [v.kind for v in repaired] == ["lease"]
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert (account(alice).queued_count, account(alice).running_count) == (1, 0)
    assert find_violations() == []


def test_the_reaper_leaves_a_lease_renewed_after_it_read_it() -> None:
    alice = make_user("alice")
    (job,), _ = submit_jobs(alice, [JobSpec("noop", 1)])
    claim = claim_next("cpu", "d1")
    assert claim is not None
    read_at = timezone.now()  # the reaper saw the lease expired as of now...
    Job.objects.filter(pk=job.pk).update(lease_expires_at=read_at + timedelta(seconds=10))
    # ...and the holder renewed it before the reaper took the row lock.
    assert (
        release_job(claim.id, claim.fencing_token, "lease expired", expired_before=read_at) is None
    )
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING
    assert account(alice).running_count == 1


def test_the_pool_clock_sees_virtual_time_go_back() -> None:
    alice = make_user("alice")
    submit_jobs(alice, [JobSpec("noop", 1), JobSpec("noop", 2)])
    clock = PoolClock()
    assert clock.violations() == []
    claim_next("cpu", "d1")
    claim_next("cpu", "d2")
    assert clock.violations() == []
    FairPool.objects.filter(device_type="cpu").update(virtual_time=-1.0)
    assert [v.kind for v in clock.violations()] == ["pool_time"]


def test_stopping_a_running_job_settles_the_device_time_it_used() -> None:
    alice = make_user("alice")
    (job,), _ = submit_jobs(alice, [JobSpec("noop", 1)])
    claim = claim_next("cpu", "d1")
    assert claim is not None
    Job.objects.filter(pk=job.pk).update(started_at=timezone.now() - timedelta(seconds=30))
    assert remove_user_from_queue(alice, removed_by="op", stop_running=True) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert job.duration is not None and 29 < job.duration < 60
    settled = account(alice)
    assert settled.running_count == 0
    assert 29 < settled.served_seconds < 60
    # Charged the estimate at the claim; now the time really used.
    assert settled.virtual_time == pytest.approx(job.duration, abs=1.0)
    assert find_violations() == []
