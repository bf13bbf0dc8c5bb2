"""Waiting for a prediction without a thread: `jobs.predict.hub.wait_for_prediction`.

In-process, on the test database: a waiter wakes when its job ends (on PostgreSQL by
NOTIFY, long before the safety re-read 30 s away; on SQLite by the batched poll), gives
up at its limit with the unfinished state, and a cancelled waiter (a client that went
away) leaves its job alone. The time bounds tell the mechanisms apart by an order of
magnitude (a wake-up against a limit or a re-read many times further away), so a loaded
machine does not fail them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from django.db import connection

from jobs.models import Job, User
from jobs.predict import hub as predict
from jobs.predict.hub import (
    completion_hub,
    run_in_db_thread,
    submit_prediction,
    wait_for_prediction,
)
from jobs.queue import claim_next, finish_job


@pytest.fixture(autouse=True)
def close_predict_connections(transactional_db: None) -> Iterator[None]:
    yield
    predict.close_db_connections()  # the test database is dropped at the end


def queue_one(text: str = "x") -> str:
    owner, _ = User.objects.get_or_create(username="waiter")
    return submit_prediction(owner, text)


def run_the_model(output: str = "42") -> None:
    claim = claim_next("cpu", "test-device")
    assert claim is not None
    assert finish_job(claim, succeeded=True, duration=0.01, result={"input": "x", "result": output})


def test_a_waiter_returns_the_final_state_soon_after_its_job_ends() -> None:
    prediction_id = queue_one()

    async def scenario() -> tuple[float, predict.PredictionState | None]:
        waiter = asyncio.create_task(wait_for_prediction(prediction_id, 120))
        await asyncio.sleep(0.5)
        assert not waiter.done(), "returned before the job ended"
        ended = time.monotonic()
        await run_in_db_thread(run_the_model)
        state = await waiter
        return time.monotonic() - ended, state

    latency, state = asyncio.run(scenario())
    assert state is not None and state.status == "succeeded"
    assert state.output == {"input": "x", "result": "42"}
    # SQLite: the poll backs off to POLL_MAX_SECONDS; PostgreSQL: NOTIFY (see below).
    # Either way the waiter woke for the job's end, far from its 120 s limit.
    assert latency < 30


@pytest.mark.postgres
def test_on_postgres_notify_wakes_a_waiter_within_milliseconds_not_a_poll() -> None:
    prediction_id = queue_one()

    async def scenario() -> float:
        hub = completion_hub()
        waiter = asyncio.create_task(wait_for_prediction(prediction_id, 20))
        await asyncio.sleep(0.5)  # long enough for the poll to back off, were it polling
        assert hub.listening.is_set() and hub.waiting == 1
        ended = time.monotonic()
        await run_in_db_thread(run_the_model)
        await waiter
        return time.monotonic() - ended

    assert predict.SAFETY_RECHECK_SECONDS >= 30
    latency = asyncio.run(scenario())
    # The re-read is 30 s away and there is no poll: only the NOTIFY can explain this.
    assert latency < predict.SAFETY_RECHECK_SECONDS / 3


@pytest.mark.postgres
def test_on_postgres_a_lost_listen_connection_is_reopened_and_no_wake_up_is_lost() -> None:
    prediction_id = queue_one()

    async def scenario() -> predict.PredictionState | None:
        hub = completion_hub()
        waiter = asyncio.create_task(wait_for_prediction(prediction_id, 20))
        await hub.ready()
        await asyncio.sleep(0.2)

        def kill_listener() -> int:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query = %s AND pid <> pg_backend_pid()",
                    [f"LISTEN {predict.DONE_CHANNEL}"],
                )
                return cursor.rowcount

        assert await run_in_db_thread(kill_listener) == 1
        await run_in_db_thread(run_the_model)  # ends while the listener may be down
        state = await asyncio.wait_for(waiter, 5)
        await asyncio.wait_for(hub.listening.wait(), 5)  # and it is back
        return state

    state = asyncio.run(scenario())
    assert state is not None and state.status == "succeeded"


def test_a_wait_that_reaches_its_limit_returns_the_unfinished_state() -> None:
    prediction_id = queue_one()

    async def scenario() -> tuple[float, predict.PredictionState | None, int]:
        started = time.monotonic()
        state = await asyncio.wait_for(wait_for_prediction(prediction_id, 0.3), 30)
        return time.monotonic() - started, state, completion_hub().waiting

    elapsed, state, still_waiting = asyncio.run(scenario())
    assert elapsed >= 0.3  # not before its limit (and asyncio.wait_for: not never)
    assert state is not None and state.status == "queued" and not state.final
    assert still_waiting == 0


def test_a_cancelled_waiter_leaves_its_job_queued_and_is_forgotten() -> None:
    prediction_id = queue_one()

    async def scenario() -> int:
        waiter = asyncio.create_task(wait_for_prediction(prediction_id, 20))
        await asyncio.sleep(0.2)
        assert completion_hub().waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return completion_hub().waiting

    assert asyncio.run(scenario()) == 0
    assert Job.objects.get(public_id=prediction_id).status == "queued"


def test_many_waiters_of_one_process_share_one_batched_poll_and_all_wake() -> None:
    ids = [queue_one(f"x{i}") for i in range(50)]

    async def scenario() -> list[str]:
        waiters = [asyncio.create_task(wait_for_prediction(pid, 20)) for pid in ids]
        await asyncio.sleep(0.3)
        assert completion_hub().waiting == 50
        for _ in ids:
            await run_in_db_thread(run_the_model)
        states = await asyncio.wait_for(asyncio.gather(*waiters), 10)
        return [state.status for state in states if state is not None]

    assert asyncio.run(scenario()) == ["succeeded"] * 50


def test_an_unknown_prediction_id_returns_none_at_once() -> None:
    async def scenario() -> predict.PredictionState | None:
        return await wait_for_prediction("6f0c5a4e-0000-4000-8000-000000000000", 120)

    started = time.monotonic()
    assert asyncio.run(scenario()) is None
    # Not a wait to the 120 s limit: at most LISTEN_READY_SECONDS (2 s) on PostgreSQL.
    assert time.monotonic() - started < 30
