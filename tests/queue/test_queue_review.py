"""Found in review of the lock-order change: interleavings forced with a third session
holding a row lock (so the paths really meet mid-way), and sizes the happy path never
reaches."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import pytest
from django.db import connections, transaction

from jobs.invariants import find_violations, repair
from jobs.models import FairPool, FairShareAccount, Job, JobStatus, User
from jobs.queue import (
    JobSpec,
    claim_next,
    finish_and_claim_next,
    finish_job,
    pool_id_for,
    remove_user_from_queue,
    renew_leases,
    submit_jobs,
)
from tests.support.processes import wait_until
from tests.support.sessions import sessions_waiting_on_locks

pytestmark = pytest.mark.django_db(transaction=True)


def _race_with_row_held(
    lock_row: Callable[[], object], first: Callable[[], object], second: Callable[[], object]
) -> list[BaseException]:
    """Hold a row lock (`lock_row`) in a session of its own, park `first` and then
    `second` behind it, then let go: both must finish without error."""
    failures: list[BaseException] = []
    held = threading.Event()
    let_go = threading.Event()

    def in_thread(work: Callable[[], object]) -> threading.Thread:
        def body() -> None:
            try:
                work()
            except BaseException as failure:  # noqa: BLE001 - reported to the test
                failures.append(failure)
            finally:
                connections.close_all()

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    def holder() -> None:
        with transaction.atomic():
            lock_row()
            held.set()
            let_go.wait(20)

    threads = [in_thread(holder)]
    assert held.wait(10)
    threads.append(in_thread(first))
    wait_until(lambda: sessions_waiting_on_locks() >= 1, 10, "the first path to wait")
    threads.append(in_thread(second))
    wait_until(lambda: sessions_waiting_on_locks() >= 2, 10, "the second path to wait")
    let_go.set()
    for thread in threads:
        thread.join(timeout=30)
    return failures


@pytest.mark.postgres
@pytest.mark.parametrize("check", ["find_violations", "repair"])
def test_the_queue_check_and_removing_a_user_with_deactivate_do_not_deadlock(check: str) -> None:
    """The check's recount locked the account and, through its join, the user row; remove
    with deactivate updates the user row and then locks the accounts: opposite orders."""
    mallory = User.objects.create(username="mallory")
    submit_jobs(mallory, [JobSpec("noop", i) for i in range(3)])
    # Drift, so that the account is a suspect the check confirms under its lock.
    FairShareAccount.objects.filter(user=mallory).update(queued_count=7)

    def lock_account() -> None:
        list(FairShareAccount.objects.select_for_update().filter(user=mallory).values("id"))

    def run_check() -> None:
        if check == "repair":
            repair("test")
        else:
            find_violations()

    def remove() -> None:
        remove_user_from_queue(mallory, removed_by="op", deactivate=True)

    assert _race_with_row_held(lock_account, run_check, remove) == []
    assert not Job.objects.filter(owner=mallory, status=JobStatus.QUEUED).exists()
    mallory.refresh_from_db()
    assert not mallory.is_active


@pytest.mark.postgres
def test_stopping_a_users_running_jobs_in_two_pools_while_a_dispatcher_renews_them() -> None:
    """A dispatcher renews the leases of all its jobs, every pool, in id order; remove
    with stop_running locked one pool's running jobs, then the next pool's: when the
    first pool's job has the higher id, the two wait for each other."""
    pool_id_for("cpu")  # the older pool, whose job is the newer one
    mallory = User.objects.create(username="mallory")
    submit_jobs(mallory, [JobSpec("noop", 1, device_type="gpu")])
    submit_jobs(mallory, [JobSpec("noop", 2, device_type="cpu")])
    gpu_claim = claim_next("gpu", "g1")
    cpu_claim = claim_next("cpu", "c1")
    assert gpu_claim is not None and cpu_claim is not None
    assert gpu_claim.id < cpu_claim.id and pool_id_for("cpu") < pool_id_for("gpu")
    renewed: list[set[int]] = []

    def lock_cpu_job() -> None:
        list(Job.objects.select_for_update().filter(pk=cpu_claim.id).values("id"))

    def remove() -> None:
        remove_user_from_queue(mallory, removed_by="op", stop_running=True)

    def renew() -> None:
        renewed.append(renew_leases([gpu_claim, cpu_claim]))

    assert _race_with_row_held(lock_cpu_job, remove, renew) == []
    # Stopped once each: the renewal found them gone, or renewed them before the stop.
    assert set(Job.objects.filter(owner=mallory).values_list("status", flat=True)) == {
        JobStatus.CANCELLED
    }
    assert find_violations() == []


@pytest.mark.parametrize("duration", [math.nan, math.inf, -math.inf, -5.0])
@pytest.mark.parametrize("combined", [False, True])
def test_a_duration_that_is_not_a_time_does_not_poison_the_pool(
    duration: float, combined: bool
) -> None:
    """NaN or Infinity seconds passed every check on the way in (a schema's "minimum: 0"
    lets NaN through): on PostgreSQL it became the pool's cost estimate, charged to every
    later job; on SQLite the settle failed and the job stayed running."""
    alice = User.objects.create(username="alice")
    submit_jobs(alice, [JobSpec("noop", i) for i in range(2)])
    claim = claim_next("cpu", "d1")
    assert claim is not None
    if combined:
        accepted, _ = finish_and_claim_next(
            claim, "d1", succeeded=True, duration=duration, result=1
        )
    else:
        accepted = finish_job(claim, succeeded=True, duration=duration, result=1)
    assert accepted
    job = Job.objects.get(pk=claim.id)
    assert job.status == JobStatus.SUCCEEDED and job.duration is not None
    assert math.isfinite(job.duration) and job.duration >= 0
    assert math.isfinite(FairPool.objects.get(device_type="cpu").cost_estimate)
    for vt, served in FairShareAccount.objects.values_list("virtual_time", "served_seconds"):
        assert math.isfinite(vt) and math.isfinite(served)
    assert find_violations() == []
