"""The device paths follow the one lock order too: device row, then pool, account, job.

Each scenario is forced, not hoped for: a third session holds the job's row lock, so the
first path is parked part-way (holding what it took before the job), the second path is
started and parked on its next lock, then the job is let go. If the two paths took their
locks in different orders, PostgreSQL now finds a deadlock and aborts one of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from django.db import connections, transaction

from devices import pool
from devices.models import Device
from jobs.invariants import find_violations
from jobs.models import Job, JobStatus, User
from jobs.queue import ClaimedJob, JobSpec, submit_jobs
from tests.support.processes import wait_until
from tests.support.sessions import sessions_waiting_on_locks

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _busy_device() -> tuple[Device, ClaimedJob]:
    user = User.objects.create(username="alice")
    submit_jobs(user, [JobSpec("noop", 1, device_type="qpu", size=2)])
    device, _ = pool.register_device("qpu-1", "qpu", 5, "addr1")
    claimed = pool.claim_for_device(device.name)
    assert claimed is not None
    return claimed


def _race_with_job_held(first: Callable[[], object], second: Callable[[], object]) -> list:
    """Park `first` on the job's row lock, start `second` and let it park, then let go."""
    failures: list[BaseException] = []
    job_locked = threading.Event()
    let_go = threading.Event()

    def in_thread(work: Callable[[], object]) -> Callable[[], None]:
        def body() -> None:
            try:
                work()
            except BaseException as failure:  # noqa: BLE001 - reported to the test
                failures.append(failure)
            finally:
                connections.close_all()

        return body

    def holder() -> None:
        with transaction.atomic():
            list(Job.objects.select_for_update().values_list("id"))
            job_locked.set()
            let_go.wait(20)

    threads = [threading.Thread(target=in_thread(holder))]
    threads[0].start()
    assert job_locked.wait(10)
    threads.append(threading.Thread(target=in_thread(first)))
    threads[1].start()
    wait_until(lambda: sessions_waiting_on_locks() >= 1, 10, "the first path to wait for the job")
    threads.append(threading.Thread(target=in_thread(second)))
    threads[2].start()
    # The second path parks on a lock the first holds (or it found nothing to do).
    deadline = time.monotonic() + 3
    while sessions_waiting_on_locks() < 2 and threads[2].is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    let_go.set()
    for thread in threads:
        thread.join(timeout=30)
    return failures


def test_a_report_settling_while_the_device_is_marked_offline_does_not_deadlock() -> None:
    device, claim = _busy_device()

    def report() -> None:
        pool.settle_on_device(device.name, claim, succeeded=True, duration=0.5, result=1)

    def health_check() -> None:
        pool.mark_offline(device.name, "missed 3 pings")

    assert _race_with_job_held(report, health_check) == []
    job = Job.objects.get(pk=claim.id)
    # Settled or requeued, once: whichever came first, the other found nothing to do.
    assert job.status in (JobStatus.SUCCEEDED, JobStatus.QUEUED)
    device = Device.objects.get(name=device.name)
    assert device.current_job_id is None and device.state == Device.State.OFFLINE
    assert find_violations() == []


def test_a_report_settling_while_the_device_is_removed_does_not_deadlock() -> None:
    device, claim = _busy_device()

    def report() -> None:
        pool.settle_on_device(device.name, claim, succeeded=True, duration=0.5, result=1)

    def remove() -> None:
        pool.remove_device(device.name)

    assert _race_with_job_held(report, remove) == []
    assert Job.objects.get(pk=claim.id).status in (JobStatus.SUCCEEDED, JobStatus.QUEUED)
    assert not Device.objects.filter(name=device.name).exists()
    assert find_violations() == []


def test_a_job_given_back_while_the_device_is_marked_offline_does_not_deadlock() -> None:
    device, claim = _busy_device()

    def give_back() -> None:
        pool.give_back(device.name, claim, "agent refused it")

    def health_check() -> None:
        pool.mark_offline(device.name, "missed 3 pings")

    assert _race_with_job_held(give_back, health_check) == []
    job = Job.objects.get(pk=claim.id)
    assert job.status == JobStatus.QUEUED and job.attempts == 1
    device = Device.objects.get(name=device.name)
    assert device.current_job_id is None and device.state == Device.State.OFFLINE
    assert find_violations() == []
