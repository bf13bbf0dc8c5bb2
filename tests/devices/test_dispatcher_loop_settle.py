"""The local devices' settle-and-claim runs from the dispatcher's event loop on connections
of its own (devices.dispatcher.settler, issue 16). Those connections are killed on the
server again and again while a dispatcher drains a pool: each settle that lost its
connection is retried on a new one, and what is asserted is what happened to the jobs:
every job ran and succeeded, and the queue's checker finds nothing."""

from __future__ import annotations

import os
import signal
from datetime import datetime
from functools import partial

import pytest
from django.db import connection, transaction
from django.utils import timezone

from devices.dispatcher.settler import APPLICATION_NAME
from jobs.invariants import find_violations
from jobs.models import FairPool, Job, JobStatus, User
from jobs.queue import JobSpec, submit_jobs
from tests.conftest import executions
from tests.support.processes import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

JOBS = 150
KILLS = 5


def _settle_pids() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [APPLICATION_NAME]
        )
        return [row[0] for row in cursor.fetchall()]


def _kill_settle_sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            [APPLICATION_NAME],
        )
        return int(cursor.fetchone()[0])


def _succeeded_past(count: int) -> bool:
    return Job.objects.filter(status=JobStatus.SUCCEEDED).count() > count


def test_settles_whose_connection_is_killed_are_retried_and_every_job_succeeds(
    start_dispatcher, subprocess_env
):
    owner = User.objects.create(username="settle-killed")
    tags = [f"k{index}" for index in range(JOBS)]
    submit_jobs(owner, [JobSpec("sleep", {"seconds": 0.02, "tag": tag}) for tag in tags])
    # A short lease: a claim committed whose answer was lost with its connection comes
    # back to the queue soon.
    dispatcher = start_dispatcher(devices=2, name="killed-settles", ZYPHER_LEASE_SECONDS="3")
    killed = 0
    for _ in range(KILLS):
        done = Job.objects.filter(status=JobStatus.SUCCEEDED).count()
        wait_until(lambda: _kill_settle_sessions() > 0, 60, "a settle connection to kill")
        killed += 1
        wait_until(  # the drain goes on after each kill, on new connections
            partial(_succeeded_past, done + 5), 60, "jobs to be settled after the kill"
        )
    wait_until(
        lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() == JOBS,
        120,
        "every job to succeed",
    )
    assert killed == KILLS
    assert "database unavailable" in dispatcher.log_text()  # the settles were retried
    assert sorted(set(executions(subprocess_env))) == sorted(tags)  # none lost
    assert find_violations() == []


def _ran_since(since: datetime, device: str, count: int) -> bool:
    return Job.objects.filter(started_at__gt=since, device=device).count() >= count


def _freeze_while_idle(pid: int) -> bool:
    """SIGSTOP `pid`; keep it stopped only if it stopped outside a transaction."""
    os.kill(pid, signal.SIGSTOP)
    with connection.cursor() as cursor:
        cursor.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    if row is not None and row[0] == "idle":
        return True  # a stopped backend's state cannot change under us
    os.kill(pid, signal.SIGCONT)
    return False


def test_a_settle_whose_backend_hangs_is_given_up_and_its_device_works_on(
    start_dispatcher, subprocess_env
):
    """A settle's backend that never answers (frozen; a network that stopped forwarding
    looks the same): the call is given up after the lease (its job's lease is not renewed
    while it settles, so the job is the reaper's by then) and retried on a new connection,
    and its device goes on running jobs while that backend stays frozen."""
    owner = User.objects.create(username="settle-hung")
    tags = [f"h{index}" for index in range(600)]
    submit_jobs(owner, [JobSpec("sleep", {"seconds": 0.02, "tag": tag}) for tag in tags])
    start_dispatcher(devices=2, name="hung-settle")  # lease 3 s (subprocess_env)
    wait_until(lambda: len(_settle_pids()) == 2, 60, "both settle connections")
    frozen = _settle_pids()[0]
    # Frozen between two calls: frozen inside one it would keep the pool's row locked,
    # and no device of the pool could settle or claim until it runs again (PostgreSQL's
    # lock, not the dispatcher's to break).
    wait_until(partial(_freeze_while_idle, frozen), 60, "the settle backend frozen while idle")
    frozen_at = timezone.now()
    try:
        # Each device takes a connection in turn: one of them soon waits on the frozen
        # one. Both run many jobs after the freeze only if that wait ends.
        for device in ("hung-settle-cpu-0", "hung-settle-cpu-1"):
            wait_until(
                partial(_ran_since, frozen_at, device, 30),
                60,
                f"{device} to run jobs while a settle backend is frozen",
            )
    finally:
        os.kill(frozen, signal.SIGCONT)
    wait_until(
        lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() == len(tags),
        120,
        "every job to succeed",
    )
    assert sorted(set(executions(subprocess_env))) == sorted(tags)  # none lost
    assert find_violations() == []


def _settle_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # fresh inside a transaction
    return len(_settle_pids())


def test_a_settle_given_up_while_it_waits_for_a_lock_leaves_no_backend_behind(
    start_dispatcher, subprocess_env
):
    """A settle given up while its backend waits (here for the pool's row lock, held by
    a long transaction) is cancelled on the server, not only dropped by the client: a
    backend left waiting would run the abandoned call once the lock is free, and one more
    would pile up every lease, each a connection, while the lock is held."""
    owner = User.objects.create(username="settle-locked")
    tags = [f"w{index}" for index in range(60)]
    submit_jobs(owner, [JobSpec("sleep", {"seconds": 0.05, "tag": tag}) for tag in tags])
    dispatcher = start_dispatcher(devices=2, name="locked-settle")  # lease 3 s
    wait_until(partial(_succeeded_past, 5), 60, "jobs to flow")
    with transaction.atomic():
        list(FairPool.objects.select_for_update(no_key=True).filter(device_type="cpu"))
        wait_until(  # each device's settle given up at least twice on this lock
            lambda: dispatcher.log_text().count("no answer to the settle") >= 4,
            60,
            "settles to be given up",
        )
        wait_until(lambda: _settle_backends() <= 2, 30, "the given-up settles' backends to end")
    wait_until(
        lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() == len(tags),
        120,
        "every job to succeed",
    )
    assert sorted(set(executions(subprocess_env))) == sorted(tags)
    assert find_violations() == []


# Inputs whose JSON text a driver could read back as another value: a JSON string (which
# psycopg's own jsonb loader gives back as a Python str, then read again as JSON text),
# one that is itself JSON, and structures.
INPUTS = ["wait 5", "42", "null", '{"a": 1}', "", 7, 2.5, None, [1, "2"], {"a": "x"}]


def test_a_job_claimed_by_a_loop_settle_gets_exactly_its_input(start_dispatcher):
    owner = User.objects.create(username="loop-inputs")
    # One device: every job after the first is claimed by the previous one's settle.
    jobs, _ = submit_jobs(owner, [JobSpec("noop", value) for value in INPUTS * 3])
    start_dispatcher(devices=1, name="loop-inputs")
    wait_until(
        lambda: (
            Job.objects.filter(owner=owner)
            .exclude(status=JobStatus.QUEUED)
            .exclude(status=JobStatus.RUNNING)
            .count()
            == len(jobs)
        ),
        60,
        "every job to end",
    )
    ended = {job.pk: job for job in Job.objects.filter(owner=owner)}
    assert [(ended[job.pk].status, ended[job.pk].result) for job in jobs] == [
        (JobStatus.SUCCEEDED, value) for value in INPUTS * 3
    ]
    assert find_violations() == []
