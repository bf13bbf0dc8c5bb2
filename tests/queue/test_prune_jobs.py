"""`manage.py prune_jobs --older-than`: ended jobs go in small batches; queued and running
jobs, recent ones and those of programs still to be called back stay, and so do the
users' device seconds and the queue's invariants."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.invariants import find_violations
from jobs.models import FairShareAccount, Job, JobRun, JobStatus, Program, User
from jobs.programs import create_program
from jobs.queue import JobSpec, cancel_job, claim_next, finish_job, submit_jobs

pytestmark = pytest.mark.django_db

SPEC = JobSpec(kind="noop", input=1)


def finished_jobs(owner: User, count: int, *, succeeded: bool = True) -> list[Job]:
    """`count` jobs of `owner` run to the end by the queue's own functions."""
    submit_jobs(owner, [SPEC] * count)
    done = []
    for _ in range(count):
        claim = claim_next("cpu", "device-1")
        assert claim is not None
        assert finish_job(claim, succeeded=succeeded, duration=2.0, error="" if succeeded else "x")
        done.append(Job.objects.get(pk=claim.id))
    return done


def age(jobs: list[Job], days: float) -> None:
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(
        finished_at=timezone.now() - timedelta(days=days)
    )


def prune(*args: str) -> list[str]:
    out = StringIO()
    call_command("prune_jobs", *args, stdout=out)
    return out.getvalue().splitlines()


def test_old_ended_jobs_go_and_everything_else_stays() -> None:
    alice = User.objects.create(username="alice")
    old_succeeded = finished_jobs(alice, 2)
    old_failed = finished_jobs(alice, 1, succeeded=False)
    [to_cancel] = submit_jobs(alice, [SPEC])[0]
    assert cancel_job(to_cancel)
    recent = finished_jobs(alice, 1)
    JobRun.objects.create(
        job=old_succeeded[0],
        owner=alice,
        device_type="cpu",
        started_at=timezone.now() - timedelta(days=41),
        ended_at=timezone.now() - timedelta(days=41),
    )
    age([*old_succeeded, *old_failed, Job.objects.get(pk=to_cancel.pk)], days=40)
    age(recent, days=29)
    running, queued = submit_jobs(alice, [SPEC, SPEC])[0]
    assert claim_next("cpu", "device-2") is not None
    # Old as can be, but not ended.
    Job.objects.filter(pk__in=[running.pk, queued.pk]).update(
        created_at=timezone.now() - timedelta(days=400)
    )
    served_before = FairShareAccount.objects.get(user=alice).served_seconds

    lines = prune("--older-than", "30d")

    assert lines[-1] == "pruned 4 jobs that ended more than 30d ago"
    left = dict(Job.objects.values_list("pk", "status"))
    assert left == {
        recent[0].pk: JobStatus.SUCCEEDED,
        running.pk: JobStatus.RUNNING,
        queued.pk: JobStatus.QUEUED,
    }
    assert not JobRun.objects.exists()
    assert FairShareAccount.objects.get(user=alice).served_seconds == served_before == 8.0
    assert find_violations() == []


def test_jobs_of_a_program_whose_callback_is_pending_are_kept() -> None:
    alice = User.objects.create(username="alice")
    pending, _, _ = create_program(
        alice, [SPEC], device_type="cpu", callback_url="http://127.0.0.1:9/hook"
    )
    delivered, _, _ = create_program(
        alice, [SPEC], device_type="cpu", callback_url="http://127.0.0.1:9/hook"
    )
    for _ in range(2):
        claim = claim_next("cpu", "device-1")
        assert claim is not None and finish_job(claim, succeeded=True, duration=1.0)
    Program.objects.filter(pk=delivered.pk).update(callback_status=Program.Delivery.DELIVERED)
    age(list(Job.objects.all()), days=60)

    assert prune("--older-than", "30d")[-1].startswith("pruned 1 jobs")

    assert list(Job.objects.values_list("program", flat=True)) == [pending.pk]


def test_a_job_whose_own_callback_is_pending_is_kept() -> None:
    alice = User.objects.create(username="alice")
    waiting, called = finished_jobs(alice, 2)
    Job.objects.filter(pk=waiting.pk).update(
        callback_url="http://127.0.0.1:9/hook", callback_status=Program.Delivery.PENDING
    )
    Job.objects.filter(pk=called.pk).update(
        callback_url="http://127.0.0.1:9/hook", callback_status=Program.Delivery.DELIVERED
    )
    age([waiting, called], days=60)

    assert prune("--older-than", "30d")[-1].startswith("pruned 1 jobs")

    assert list(Job.objects.values_list("pk", flat=True)) == [waiting.pk]


def test_each_batch_is_reported_and_the_total_last() -> None:
    alice = User.objects.create(username="alice")
    age(finished_jobs(alice, 5), days=2)

    lines = prune("--older-than", "1d", "--batch-size", "2")

    assert lines == [
        "batch 1: deleted 2 jobs",
        "batch 2: deleted 2 jobs",
        "batch 3: deleted 1 jobs",
        "pruned 5 jobs that ended more than 1d ago",
    ]
    assert not Job.objects.exists()


def test_nothing_to_prune_prints_a_zero_total() -> None:
    assert prune("--older-than", "30d") == ["pruned 0 jobs that ended more than 30d ago"]


@pytest.mark.parametrize("bad", ["30", "thirty days", "-1d", "1w"])
def test_an_age_that_is_not_a_number_and_unit_is_refused(bad: str) -> None:
    with pytest.raises(CommandError, match="not an age"):
        prune(f"--older-than={bad}")


def test_a_running_or_queued_job_is_kept_even_with_an_old_finished_at() -> None:
    # A drifted row (check_queue reports it) is still not pruning's to delete.
    alice = User.objects.create(username="alice")
    running, queued = submit_jobs(alice, [SPEC, SPEC])[0]
    assert claim_next("cpu", "device-1") is not None
    age([running, queued], days=400)

    assert prune("--older-than", "30d") == ["pruned 0 jobs that ended more than 30d ago"]
    assert Job.objects.count() == 2
