"""Nothing lost, nothing run twice: several dispatchers, kill -9, and stale claims."""

from __future__ import annotations

import os
import signal
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, User
from jobs.queue import JobSpec, submit_jobs
from tests.conftest import executions
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


def test_two_dispatchers_never_run_a_job_twice(start_dispatcher, subprocess_env):
    users = [User.objects.create(username=f"user{i}") for i in range(5)]
    tags = []
    for index, user in enumerate(users):
        batch = [f"{index}-{n}" for n in range(60)]
        tags += batch
        submit_jobs(user, [JobSpec("sleep", {"seconds": 0.005, "tag": tag}) for tag in batch])
    start_dispatcher(devices=2, name="alpha")
    start_dispatcher(devices=2, name="beta")
    wait_until(lambda: Job.objects.filter(status="succeeded").count() == len(tags), 120, "all jobs")
    ran = Counter(executions(subprocess_env))
    assert set(ran) == set(tags)
    assert max(ran.values()) == 1
    devices = set(Job.objects.values_list("device", flat=True))
    assert any(d.startswith("alpha") for d in devices) and any(
        d.startswith("beta") for d in devices
    )


def test_a_job_whose_dispatcher_is_killed_is_requeued_and_then_succeeds(
    start_dispatcher, subprocess_env
):
    user = User.objects.create(username="victim")
    [job], _ = submit_jobs(user, [JobSpec("sleep", {"seconds": 1.5, "tag": "killed"})])
    first = start_dispatcher(devices=1, name="first")
    wait_until(lambda: Job.objects.get(pk=job.pk).status == "running", 30, "the job to start")
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    killed_at = timezone.now()
    # What the dead holder left: a lease no one renews. Set at a renewal before the kill
    # as "now + the configured lease", it ends within that lease of the death (a lease
    # not scaled to the setting would leave the job stranded longer).
    left_until = Job.objects.get(pk=job.pk).lease_expires_at
    lease = timedelta(seconds=float(subprocess_env["ZYPHER_LEASE_SECONDS"]))
    assert left_until is not None and left_until <= killed_at + lease

    second = start_dispatcher(devices=1, name="second")
    wait_until(
        lambda: Job.objects.get(pk=job.pk).status == "succeeded", 60, "the requeued job to succeed"
    )
    job.refresh_from_db()
    assert job.attempts == 2 and job.device.startswith("second")
    # Brought back by the reaper once that lease ran out, not taken from a live holder
    # early: the second run started after the lease's end.
    assert f"job {job.public_id}: lease expired; now queued" in second.log_text()
    assert job.started_at is not None and job.started_at >= left_until
    assert not Job.objects.filter(status="running").exists()
    # The orphaned worker died with its dispatcher: the handler completed exactly once.
    assert executions(subprocess_env) == ["killed"]


def test_a_hung_dispatchers_late_result_is_refused(start_dispatcher, subprocess_env):
    user = User.objects.create(username="hung")
    [job], _ = submit_jobs(user, [JobSpec("sleep", {"seconds": 2, "tag": "hung"})])
    stuck = start_dispatcher(devices=1, name="stuck")
    wait_until(lambda: Job.objects.get(pk=job.pk).status == "running", 30, "the job to start")
    os.killpg(stuck.pid, signal.SIGSTOP)  # the dispatcher and its worker hang
    try:
        start_dispatcher(devices=1, name="rescuer")
        wait_until(lambda: Job.objects.get(pk=job.pk).status == "succeeded", 30, "the rescue")
    finally:
        os.killpg(stuck.pid, signal.SIGCONT)
    # Awake again, the stale holder either has its late result refused (fencing token)
    # or learns at its next heartbeat that the lease is gone and stops the device.
    wait_until(
        lambda: "result refused" in (log := stuck.log_text()) or "no longer held" in log,
        30,
        "the stale holder to be turned away",
    )
    job.refresh_from_db()
    assert job.device.startswith("rescuer") and job.attempts == 2


def test_sigterm_requeues_a_running_job_and_exits_cleanly(start_dispatcher):
    user = User.objects.create(username="patient")
    [job], _ = submit_jobs(user, [JobSpec("sleep", {"seconds": 30, "tag": "long"})])
    dispatcher = start_dispatcher(devices=1, ZYPHER_SHUTDOWN_GRACE_SECONDS="0.5")
    wait_until(lambda: Job.objects.get(pk=job.pk).status == "running", 30, "the job to start")
    assert dispatcher.stop(timeout=15) == 0
    job.refresh_from_db()
    assert job.status == "queued" and "shut down" in job.error


def test_removing_a_user_stops_the_job_it_is_running_and_cancels_the_rest(
    start_dispatcher, subprocess_env
):
    from jobs.queue import remove_user_from_queue

    user = User.objects.create(username="removed")
    other = User.objects.create(username="stays")
    submit_jobs(
        user, [JobSpec("sleep", {"seconds": 30, "tag": "long"}), JobSpec("sleep", {"tag": "never"})]
    )
    dispatcher = start_dispatcher(devices=1)
    wait_until(
        lambda: Job.objects.filter(owner=user, status="running").exists(), 30, "the job to start"
    )
    [after], _ = submit_jobs(other, [JobSpec("sleep", {"tag": "after"})])

    assert remove_user_from_queue(user, removed_by="operator", stop_running=True) == 2
    wait_until(
        lambda: Job.objects.get(pk=after.pk).status == "succeeded", 30, "the device to be freed"
    )
    assert set(Job.objects.filter(owner=user).values_list("status", "cancelled_by")) == {
        ("cancelled", "operator")
    }
    assert "no longer held" in dispatcher.log_text()
    assert executions(subprocess_env) == ["after"]
