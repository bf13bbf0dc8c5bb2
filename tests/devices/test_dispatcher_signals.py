"""A dispatcher that can be stopped, and that is never half alive (issue 12).

SIGTERM/SIGINT stop it within ZYPHER_SHUTDOWN_GRACE_SECONDS when jobs run and at once
when none do, database reachable or not; a second signal stops it at once. A background
task that crashes is restarted; one that keeps crashing makes it exit non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jobs.models import Job, JobStatus, User
from jobs.queue import JobSpec, claim_next, submit_jobs
from tests.support.fault_drill import pg_ctl
from tests.support.processes import ServiceProcess, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.one_pass]


def _exit_within(process: ServiceProcess, seconds: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        status = process.process.wait(timeout=seconds + 10)
    except subprocess.TimeoutExpired as exc:
        tail = process.log_text()[-3000:]
        raise AssertionError(f"still running after {seconds + 10}s:\n{tail}") from exc
    return status, time.monotonic() - started


def _submit(tag: str, seconds: float) -> Job:
    user, _ = User.objects.get_or_create(username="stopper")
    [job], _ = submit_jobs(user, [JobSpec("sleep", {"seconds": seconds, "tag": tag})])
    return job


def _running(job: Job) -> bool:
    return Job.objects.get(pk=job.pk).status == JobStatus.RUNNING


def test_an_idle_dispatcher_stops_at_once(start_dispatcher):
    dispatcher = start_dispatcher(devices=2)
    dispatcher.signal(signal.SIGTERM)
    status, took = _exit_within(dispatcher, 2)
    assert status == 0 and took < 2, (took, dispatcher.log_text()[-2000:])


def test_a_running_job_gets_the_grace_period_then_goes_back_to_the_queue(start_dispatcher):
    # It waits the grace (load only adds to that), then gives the job back rather than
    # waiting for it: an exit well before the 60 s job would end is an exit for the grace.
    grace, job_seconds = 2, 60
    job = _submit("long", job_seconds)
    dispatcher = start_dispatcher(devices=1, ZYPHER_SHUTDOWN_GRACE_SECONDS=str(grace))
    wait_until(lambda: _running(job), 30, "the job to start")
    dispatcher.signal(signal.SIGINT)
    status, took = _exit_within(dispatcher, job_seconds / 2)
    log = dispatcher.log_text()
    assert status == 0 and grace * 0.75 < took < job_seconds / 2, (took, log[-2000:])
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
    assert "requeued at shutdown" in log, log[-2000:]


def test_a_job_that_ends_within_the_grace_period_is_recorded(start_dispatcher):
    # The grace is a bound, not a wait: the dispatcher exits when its last job ends. The
    # grace is made far longer than the 1.5 s job and its overhead (a worker's result and
    # settle, some 2 s idle and 11 s on a loaded machine), so an exit before the grace ran
    # out is an exit for the job's end; one that waited the grace out fails here.
    grace = 120
    job = _submit("short", 1.5)
    dispatcher = start_dispatcher(devices=1, ZYPHER_SHUTDOWN_GRACE_SECONDS=str(grace))
    wait_until(lambda: _running(job), 30, "the job to start")
    dispatcher.signal(signal.SIGTERM)
    status, took = _exit_within(dispatcher, grace)
    log = dispatcher.log_text()
    assert status == 0 and took < grace, (took, log[-2000:])
    assert Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED
    assert "waiting for running jobs" in log and "requeued at shutdown" not in log, log[-2000:]


def test_a_second_signal_stops_at_once(start_dispatcher):
    job = _submit("second", 60)
    dispatcher = start_dispatcher(devices=1, ZYPHER_SHUTDOWN_GRACE_SECONDS="60")
    wait_until(lambda: _running(job), 30, "the job to start")
    dispatcher.signal(signal.SIGTERM)
    time.sleep(0.5)
    dispatcher.signal(signal.SIGTERM)
    status, took = _exit_within(dispatcher, 3)
    assert took < 3, (took, dispatcher.log_text()[-2000:])
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


@pytest.mark.postgres
@pytest.mark.parametrize("busy", [False, True])
def test_a_dispatcher_stops_within_its_bound_when_the_database_is_gone(start_dispatcher, busy):
    job = _submit("outage", 60) if busy else None
    dispatcher = start_dispatcher(devices=1, ZYPHER_SHUTDOWN_GRACE_SECONDS="3")
    if job is not None:
        wait_until(lambda: _running(job), 30, "the job to start")
    data = Path(os.environ["ZYPHER_TEST_PGDATA"])
    from django.db import connection

    connection.close()
    pg_ctl("-D", str(data), "-m", "fast", "-w", "stop")
    try:
        time.sleep(1)  # the dispatcher notices: its LISTEN connection drops, claims fail
        dispatcher.signal(signal.SIGINT)
        # Idle: at once. Busy: the grace period (3 s), then a bounded try to give the job
        # back; what it cannot requeue, the lease hands back.
        bound = 9.5 if busy else 2
        status, took = _exit_within(dispatcher, bound)
        assert took < bound, (took, dispatcher.log_text()[-3000:])
    finally:
        pg_ctl("-D", str(data), "-l", str(data.parent / "postgres.log"), "-w", "start")
    if job is not None:
        # The job's lease ran out with its dispatcher: a new dispatcher runs it.
        start_dispatcher(devices=1, name="after-outage")
        wait_until(
            lambda: Job.objects.get(pk=job.pk).attempts == 2, 30, "the job to be taken again"
        )


def test_a_crashing_background_task_is_restarted_and_keeps_working(start_dispatcher, settings):
    # A job left running by a "ghost" holder that died: only the reaper can bring it back.
    settings.ZYPHER_LEASE_SECONDS = 1
    job = _submit("reaped", 0.05)
    assert claim_next("cpu", "ghost-device") is not None
    dispatcher = start_dispatcher(devices=1, ZYPHER_TEST_TASK_FAULTS="reaper=2")
    wait_until(
        lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED,
        30,
        "the restarted reaper to requeue the job and the dispatcher to run it",
    )
    log = dispatcher.log_text()
    assert log.count("background task reaper crashed") == 2, log[-3000:]
    assert "Traceback" in log and "InjectedFault" in log
    assert dispatcher.process.poll() is None


def test_a_task_that_keeps_crashing_makes_the_dispatcher_exit_non_zero(start_dispatcher):
    dispatcher = start_dispatcher(devices=1, ZYPHER_TEST_TASK_FAULTS="callbacks=1000")
    status, _ = _exit_within(dispatcher, 20)
    log = dispatcher.log_text()
    assert status == 1, log[-3000:]
    assert "background task callbacks crashed 5 times" in log
