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


def test_a_job_no_registered_device_can_run_says_why_it_waits_and_holds_up_nobody():
    from rest_framework.test import APIClient

    from devices.models import Device

    owner = User.objects.create(username="dreamer")
    other = User.objects.create(username="other")
    client = APIClient()
    client.force_login(owner)
    (waiting,), _ = submit_jobs(owner, [JobSpec("noop", 0, "qpu", size=10)])

    before = client.get(f"/api/jobs/{waiting.public_id}/").json()
    assert "no device of pool 'qpu' is registered" in before["wait_reason"]

    Device.objects.create(name="five", device_type="qpu", size=5, kind=Device.Kind.REMOTE)
    (runnable,), _ = submit_jobs(other, [JobSpec("noop", 1, "qpu", size=5)])
    answer = client.get(f"/api/jobs/{waiting.public_id}/").json()
    assert answer["status"] == "queued"
    assert "needs a device of size 10" in answer["wait_reason"]
    assert "largest registered in pool 'qpu' has size 5" in answer["wait_reason"]
    claim = claim_next("qpu", "five", 5)
    assert claim is not None and claim.id == runnable.pk

    Device.objects.create(name="ten", device_type="qpu", size=10, kind=Device.Kind.REMOTE)
    assert client.get(f"/api/jobs/{waiting.public_id}/").json()["wait_reason"] is None


def test_the_dashboard_lists_the_jobs_no_registered_device_can_run():
    from django.test import Client
    from django.urls import reverse

    from devices.models import Device
    from jobs.monitoring.stats import dashboard_stats

    Device.objects.create(name="five", device_type="qpu", size=5, kind=Device.Kind.REMOTE)
    for index in range(3):
        user = User.objects.create(username=f"big{index}")
        submit_jobs(user, [JobSpec("noop", 0, "qpu", size=7 + index), JobSpec("noop", 0, "qpu")])

    (row,) = dashboard_stats()["waiting_for_a_device"]
    assert (row["pool"], row["jobs"], row["users"]) == ("qpu", 3, 3)
    assert (row["largest_job_size"], row["largest_device_size"]) == (9, 5)

    staff = User.objects.create(username="operator", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    page = client.get(reverse("admin:dashboard")).content.decode()
    assert "Waiting for a device that can run them" in page
    assert "3 queued jobs of 3 users up to size 9" in page


def test_a_user_whose_queued_work_fit_no_device_gets_no_catch_up_run_when_it_queues_some():
    parked = User.objects.create(username="parked")
    busy = User.objects.create(username="busy")
    submit_jobs(parked, [JobSpec("noop", "too big", "qpu", size=10)])
    submit_jobs(busy, [JobSpec("noop", index, "qpu", size=1) for index in range(20)])
    for _ in range(10):
        claim = claim_next("qpu", "d5", 5)
        assert claim is not None and claim.owner == "busy"
        assert finish_job(claim, succeeded=True, duration=1.0)

    submit_jobs(parked, [JobSpec("noop", index, "qpu", size=1) for index in range(10)])
    served = []
    for _ in range(10):
        claim = claim_next("qpu", "d5", 5)
        assert claim is not None
        served.append(claim.owner)
        assert finish_job(claim, succeeded=True, duration=1.0)

    # From the submit on, both have work the device runs: they take turns.
    for prefix in range(1, len(served) + 1):
        assert abs(served[:prefix].count("parked") - prefix / 2) <= 1, served
    # The job too big still waits, for a device that fits.
    assert Job.objects.get(owner=parked, size=10).status == "queued"
