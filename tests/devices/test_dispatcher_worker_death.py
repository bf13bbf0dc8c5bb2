"""A local worker dies while its dispatcher waits on the database for it: while the claim
of its next job runs, or while the settle of its last outcome (and the claim of its next)
runs (issue 16's settle tasks). Forced, not hoped for: a test session holds the pool's row
lock, so the claim or settle parks there; the worker is killed; then the lock is let go.
What is asserted is what happened to the jobs (each ran once, all succeeded) and that
the dispatcher is still there to run them."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connections, transaction

from jobs.models import FairPool, Job, JobStatus, User
from jobs.queue import JobSpec, submit_jobs
from tests.conftest import executions
from tests.support.processes import ServiceProcess, wait_until
from tests.support.sessions import sessions_waiting_on_locks

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]


@contextmanager
def pool_locked() -> Iterator[None]:
    """Hold the cpu pool's row lock in a session of its own until the block ends."""
    locked, let_go = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                list(
                    FairPool.objects.select_for_update(no_key=True)
                    .filter(device_type="cpu")
                    .values_list("id")
                )
                locked.set()
                let_go.wait(60)
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        let_go.set()
        thread.join(timeout=30)


def kill_worker(dispatcher: ServiceProcess) -> None:
    """SIGKILL the dispatcher's (only) worker process and wait until it is gone."""
    [pid] = {int(p) for p in re.findall(r"started, pid (\d+)", dispatcher.log_text())}
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie until the dispatcher reaps it: dead all the same.
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].startswith("Z")

    wait_until(gone, 10, "the worker to die")


def test_a_worker_dying_while_its_next_job_is_claimed_loses_nothing(
    start_dispatcher, subprocess_env
):
    user = User.objects.create(username="claimdeath")
    submit_jobs(user, [JobSpec("sleep", {"seconds": 0, "tag": "only"})])
    with pool_locked():
        dispatcher = start_dispatcher(devices=1, name="claimdeath")
        wait_until(lambda: sessions_waiting_on_locks() >= 1, 20, "the claim to wait")
        kill_worker(dispatcher)
    # The job claimed for the dead worker is given back and run by its replacement.
    wait_until(
        lambda: (
            Job.objects.filter(status=JobStatus.SUCCEEDED).count() == 1
            or dispatcher.process.poll() is not None
        ),
        30,
        "the job to succeed",
    )
    assert dispatcher.process.poll() is None, dispatcher.log_text()[-3000:]
    assert executions(subprocess_env) == ["only"]


def test_a_worker_dying_while_its_outcome_is_settled_loses_nothing(
    start_dispatcher, subprocess_env
):
    user = User.objects.create(username="settledeath")
    [first, second], _ = submit_jobs(
        user,
        [
            JobSpec("sleep", {"seconds": 1.0, "tag": "first"}),
            JobSpec("sleep", {"seconds": 0, "tag": "second"}),
        ],
    )
    dispatcher = start_dispatcher(devices=1, name="settledeath")
    wait_until(lambda: Job.objects.get(pk=first.pk).status == "running", 30, "the first job")
    with pool_locked():
        # The first job ends; its settle (and the next claim) park on the pool's lock.
        wait_until(lambda: sessions_waiting_on_locks() >= 1, 20, "the settle to wait")
        kill_worker(dispatcher)
    wait_until(
        lambda: (
            Job.objects.filter(status=JobStatus.SUCCEEDED).count() == 2
            or dispatcher.process.poll() is not None
        ),
        30,
        "both jobs to succeed",
    )
    assert dispatcher.process.poll() is None, dispatcher.log_text()[-3000:]
    assert sorted(executions(subprocess_env)) == ["first", "second"]
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()
