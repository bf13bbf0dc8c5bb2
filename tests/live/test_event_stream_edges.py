"""The event stream's edges, driven as the ASGI server drives it (the generator on an
event loop, cancelled when the client goes away): a stream opened on a job that another
stream already follows still sees every later change, and a client that disconnects
leaves nothing behind on the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jobs.api.events import JobSnapshot, job_event_stream, job_watch_hub, read_snapshot
from jobs.models import User
from jobs.predict.hub import close_db_connections, completion_hub, run_in_db_thread
from jobs.progress import Progress, save_progress
from jobs.queue import ClaimedJob, JobSpec, claim_next, submit_jobs


def running_claim(username: str) -> ClaimedJob:
    submit_jobs(User.objects.create(username=username), [JobSpec(kind="noop", input=1)])
    claim = claim_next("cpu", "dev-1")
    assert claim is not None
    return claim


def report(claim: ClaimedJob, fraction: float) -> None:
    key = (claim.public_id, claim.fencing_token, "dev-1")
    assert save_progress({key: Progress(fraction, f"at {fraction}")}) == 1


async def next_event(stream: AsyncIterator[bytes], timeout: float) -> bytes:
    """The next event of `stream` (keep-alive comments skipped), or TimeoutError."""

    async def event() -> bytes:
        async for chunk in stream:
            if not chunk.startswith(b":"):
                return chunk
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(event(), timeout)


@pytest.mark.django_db(transaction=True)
def test_a_second_stream_opened_from_an_older_read_still_sees_the_next_change():
    claim = running_claim("gus")
    report(claim, 0.1)
    try:
        asyncio.run(follow_twice(claim))
    finally:
        close_db_connections()


async def follow_twice(claim: ClaimedJob) -> None:
    first = await run_in_db_thread(read_snapshot, claim.public_id)
    assert first is not None and first.progress == 0.1
    watching = job_event_stream(first)
    assert b'"progress":0.1' in await next_event(watching, 5)
    # The second client's request read the job here, then the job changed and the first
    # stream saw it, and only then did the second stream start waiting.
    late: JobSnapshot = first
    await run_in_db_thread(report, claim, 0.5)
    assert b'"progress":0.5' in await next_event(watching, 10)
    opened_late = job_event_stream(late)
    assert b'"progress":0.1' in await next_event(opened_late, 5)
    assert b'"progress":0.5' in await next_event(opened_late, 5)
    await watching.aclose()  # type: ignore[attr-defined]
    await opened_late.aclose()  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_clients_that_disconnect_leave_no_task_or_watch_behind():
    claim = running_claim("hal")
    try:
        asyncio.run(connect_and_disconnect(claim, times=50))
    finally:
        close_db_connections()


async def connect_and_disconnect(claim: ClaimedJob, times: int) -> None:
    first = await run_in_db_thread(read_snapshot, claim.public_id)
    assert first is not None
    for _ in range(times):
        stream = job_event_stream(first)
        await next_event(stream, 5)
        # The ASGI handler cancels the response's task when the client goes away.
        waiting = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    await asyncio.sleep(0)
    # Waits on an Event, other than the completion hub's own poll loop's (which stays).
    hub_tick = completion_hub()._tick
    left = [
        task
        for task in asyncio.all_tasks()
        if "Event.wait" in repr(task.get_coro())
        and task.get_coro().cr_frame.f_locals.get("self") is not hub_tick  # type: ignore[union-attr]
    ]
    assert left == [], f"{len(left)} waits left pending after their clients went away"
    assert job_watch_hub().watched == 0 and completion_hub().waiting == 0
