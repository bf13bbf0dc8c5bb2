"""Progress is a hint that no handler or agent can turn into a crash: whatever a handler
passes to `report_progress`, and whatever an agent's `status` answer says about its job's
progress, the reporter, the dispatcher's buffer and its flush (`save_progress`) neither
raise nor lose the other jobs' progress."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from devices.dispatcher.remote import RemoteDevices
from jobs.models import Job, User
from jobs.progress import (
    ProgressBuffer,
    ProgressReporter,
    report_progress,
    reporting,
    save_progress,
)
from jobs.queue import JobSpec, claim_next, submit_jobs


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    def __float__(self) -> float:
        raise RuntimeError("no number either")


def test_a_report_the_handler_cannot_even_print_is_dropped_and_the_next_one_taken():
    reporter = ProgressReporter()
    with reporting(reporter):
        report_progress(Unprintable(), "fraction that raises")  # type: ignore[arg-type]
        assert reporter.take() is None and reporter.peek() is None
        report_progress(0.5, Unprintable())  # type: ignore[arg-type]
        taken = reporter.take()
        assert taken is not None and taken.fraction == 0.5
        report_progress(0.6, "lone surrogate \ud800 here")
        taken = reporter.take()
        assert taken is not None and taken.message.encode() == b"lone surrogate ? here"


BOGUS_JOBS: list[Any] = [
    {"job_id": "not-a-uuid", "fencing_token": 1, "progress": 0.5},
    {"job_id": "00000000-0000-4000-8000-000000000001", "fencing_token": 10**30, "progress": 0.5},
    {"job_id": "00000000-0000-4000-8000-000000000002", "fencing_token": -(10**30), "progress": 1},
    {"job_id": "x" * 100_000, "fencing_token": 1, "progress": 0.5},
    {"job_id": "00000000-0000-4000-8000-000000000003", "fencing_token": 1, "progress": [1]},
    {
        "job_id": "00000000-0000-4000-8000-000000000004",
        "fencing_token": 1,
        "progress": "1" * 10_000,
        "progress_message": {"a": ["b"] * 10_000},
    },
    {
        "job_id": "00000000-0000-4000-8000-000000000005",
        "fencing_token": 1,
        "progress": 0.5,
        "progress_message": "\ud800\udfff\x00",
    },
]


@pytest.mark.django_db(transaction=True)
def test_bogus_progress_in_status_answers_neither_raises_nor_loses_a_real_jobs_progress():
    user = User.objects.create(username="pia")
    submit_jobs(user, [JobSpec(kind="noop", input=n, device_type="cpu") for n in (1, 2)])
    claim, upper = claim_next("cpu", "agent-ok"), claim_next("cpu", "agent-upper")
    assert claim is not None and upper is not None
    buffer = ProgressBuffer()
    remote = RemoteDevices(None, asyncio.Event(), 30.0, progress=buffer)  # type: ignore[arg-type]
    for number, job in enumerate(BOGUS_JOBS):
        remote.record_progress(f"agent-bad-{number}", {"job": job})
    real = {"job_id": claim.public_id, "fencing_token": claim.fencing_token, "progress": 0.25}
    remote.record_progress("agent-ok", {"job": {**real, "progress_message": "a quarter"}})
    # The same UUID spelt in capitals is the same job.
    shouted = {"job_id": upper.public_id.upper(), "fencing_token": upper.fencing_token}
    remote.record_progress("agent-upper", {"job": {**shouted, "progress": 0.75}})
    # What the dispatcher's flush does with everything it gathered in FLUSH_SECONDS.
    assert save_progress(buffer.drain()) == 2
    assert Job.objects.values_list("progress", "progress_message").get(pk=claim.id) == (
        0.25,
        "a quarter",
    )
    assert Job.objects.get(pk=upper.id).progress == 0.75
