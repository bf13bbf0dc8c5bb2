"""Progress flushes racing the queue's own writes, on PostgreSQL, from several sessions at
once: devices settle and claim (`finish_and_claim_next`) and give their last job back
(`release_job`; another device may claim it again) while two dispatchers flush progress for every key they saw, stale ones
included. No deadlock, no error, and no requeued job carries progress (a flush never
writes to a run that no longer holds the job)."""

from __future__ import annotations

import threading

import pytest
from django.conf import settings

from jobs.invariants import find_violations
from jobs.models import Job, JobStatus, User
from jobs.progress import Progress, save_progress
from jobs.queue import JobSpec, claim_next, finish_and_claim_next, release_job, submit_jobs
from tests.support.sessions import run_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_progress_flushes_racing_settles_and_requeues_never_deadlock_or_outlive_a_run():
    for name in ("ida", "jon"):
        user = User.objects.create(username=name)
        submit_jobs(user, [JobSpec(kind="noop", input=n, device_type="cpu") for n in range(30)])
    devices_done = threading.Event()
    finished: list[str] = []
    released: list[int] = []

    def device(name: str) -> None:
        try:
            claim = claim_next("cpu", name)
            for _ in range(10):
                if claim is None:
                    return
                _, claim = finish_and_claim_next(claim, name, succeeded=True, duration=0.01)
            if claim is not None:  # its last job goes back to the queue
                # One job may be given back by several devices in turn: at the third
                # attempt it fails instead (ZYPHER_MAX_ATTEMPTS).
                status = release_job(claim.id, claim.fencing_token, "device lost")
                expected = (
                    JobStatus.FAILED
                    if claim.fencing_token >= settings.ZYPHER_MAX_ATTEMPTS
                    else JobStatus.QUEUED
                )
                assert status == expected, (status, claim.fencing_token)
                released.append(claim.id)
        finally:  # the flushing threads stop even when a device failed
            finished.append(name)
            if len(finished) == 4:
                devices_done.set()

    def dispatcher_flushing() -> None:
        while not devices_done.is_set():
            seen = Job.objects.filter(status=JobStatus.RUNNING).values_list(
                "public_id", "attempts", "device"
            )
            updates = {}
            for public_id, attempts, name in seen:
                updates[(str(public_id), attempts, name)] = Progress(0.5, "half")
                updates[(str(public_id), attempts - 1, name)] = Progress(0.9, "stale")
            save_progress(updates)

    workers = [lambda n=n: device(f"dev-{n}") for n in range(4)]
    failures = run_at_once([*workers, dispatcher_flushing, dispatcher_flushing])
    assert failures == []
    # A released job may be claimed again by a device still working: whichever stayed
    # queued must carry no progress.
    requeued = Job.objects.filter(pk__in=released, status=JobStatus.QUEUED)
    assert released and requeued.exists()
    assert list(requeued.exclude(progress=None).values_list("public_id", "progress")) == []
    assert not Job.objects.filter(progress_message="stale").exists()
    assert find_violations() == []
