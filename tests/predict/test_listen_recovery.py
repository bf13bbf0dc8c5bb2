"""The LISTEN connection behind /predict and the dispatcher: made like Django's (OPTIONS,
TLS), with keepalives; while it is down waiters poll at once instead of waiting for it;
a connection killed on the server or silently dead is noticed and replaced (issue 12).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection, connections
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobs.models import Job, User
from jobs.notifications import listener_conninfo
from jobs.predict import hub as predict
from jobs.predict.hub import completion_hub, run_in_db_thread, submit_prediction
from jobs.predict.hub import wait_for_prediction as wait
from jobs.queue import JobSpec, claim_next, finish_job, submit_jobs
from tests.support.processes import wait_until

LISTENER = "zypher-listen"  # the listener's application_name (jobs.notifications)


def postgres_settings(**options: Any) -> dict[str, Any]:
    return {
        **connections.settings["default"],
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "zypher",
        "USER": "zy",
        "PASSWORD": "secret",
        "HOST": "db.example",
        "PORT": "5433",
        "OPTIONS": options,
    }


def test_the_listener_keeps_the_databases_options_and_turns_keepalives_on() -> None:
    params = listener_conninfo(
        postgres_settings(sslmode="verify-full", sslrootcert="/etc/zypher/ca.pem")
    )
    assert params["sslmode"] == "verify-full" and params["sslrootcert"] == "/etc/zypher/ca.pem"
    assert (params["dbname"], params["user"], params["password"]) == ("zypher", "zy", "secret")
    assert (params["host"], params["port"]) == ("db.example", "5433")
    assert params["keepalives"] == 1 and params["keepalives_idle"] > 0
    assert params["connect_timeout"] > 0
    # Only libpq parameters: they make a valid conninfo string and read back the same.
    parsed = conninfo_to_dict(make_conninfo(**params))
    assert parsed["sslmode"] == "verify-full" and parsed["keepalives"] == "1"


def test_the_databases_options_override_the_listener_defaults() -> None:
    params = listener_conninfo(postgres_settings(keepalives_idle=7, application_name="web-1"))
    assert params["keepalives_idle"] == 7 and params["application_name"] == "web-1"


def test_a_service_file_entry_is_enough() -> None:
    settings_dict = {**postgres_settings(service="zypher"), "NAME": "", "HOST": "", "PORT": ""}
    params = listener_conninfo(settings_dict)
    assert params["service"] == "zypher" and "dbname" not in params and "host" not in params


# On PostgreSQL, with the hub of /predict and a real dispatcher.


@pytest.fixture
def hub_tuned(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A hub whose listener stays down 6 s after a loss and pings every 0.3 s. The long
    outage keeps the timings below apart from what a defect would cost (a wait for the
    reconnect, the 30 s safety re-read) on a loaded machine."""
    monkeypatch.setattr(predict, "RECONNECT_SECONDS", 6.0)
    monkeypatch.setattr(predict, "LISTEN_PING_SECONDS", 0.3)
    monkeypatch.setattr(predict, "LISTEN_PING_TIMEOUT_SECONDS", 0.5)
    yield
    predict.close_db_connections()  # the test database is dropped at the end


def listener_pids() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database() AND pid <> pg_backend_pid()",
            [LISTENER],
        )
        return [row[0] for row in cursor.fetchall()]


def terminate_listeners() -> list[int]:
    pids = listener_pids()
    with connection.cursor() as cursor:
        for pid in pids:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    return pids


def queue_prediction() -> str:
    owner, _ = User.objects.get_or_create(username="waiter")
    return submit_prediction(owner, "x")


def end_next_job() -> None:
    claim = claim_next("cpu", "test-device")
    assert claim is not None
    assert finish_job(claim, succeeded=True, duration=0.01, result={"result": "42"})


async def latency_after_the_job_ends(prediction_id: str) -> float:
    """Seconds from the job's end until its waiter returned the final state."""
    waiter = asyncio.create_task(wait(prediction_id, 10))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    ended = time.monotonic()
    await run_in_db_thread(end_next_job)
    state = await waiter
    assert state is not None and state.status == "succeeded"
    return time.monotonic() - ended


async def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.postgres
def test_the_listener_connects_with_its_own_name_and_keepalives() -> None:
    with psycopg.connect(**listener_conninfo()) as listener:
        assert listener.execute("SHOW application_name").fetchone() == (LISTENER,)


@pytest.mark.postgres
def test_waiters_poll_at_once_while_the_listener_is_down_and_use_it_again_after(
    hub_tuned: None,
) -> None:
    first, during, after = queue_prediction(), queue_prediction(), queue_prediction()

    async def scenario() -> dict[str, float]:
        hub = completion_hub()
        timings = {"up": await latency_after_the_job_ends(first)}
        assert hub.listening.is_set()

        assert await run_in_db_thread(terminate_listeners), "no listener connection found"
        await until(lambda: not hub.listening.is_set(), 5, "the loss to be noticed")
        timings["down"] = await latency_after_the_job_ends(during)
        assert timings["down"] < 2.0, timings  # the poll, not a wait for the reconnect
        started = time.monotonic()
        ended = await wait(first, 10)
        assert ended is not None and ended.final  # an ended job: no wait for the listener
        timings["ended_job_down"] = time.monotonic() - started
        assert not hub.listening.is_set(), "the listener came back too early for this test"

        await until(hub.listening.is_set, 20, "the listener to reconnect")
        timings["back"] = await latency_after_the_job_ends(after)
        await hub.close()
        return timings

    timings = asyncio.run(scenario())
    print(timings)
    assert timings["up"] < 5.0  # NOTIFY: the safety re-read is 30 s away
    assert timings["down"] < 2.0  # the poll, not a wait for the reconnect (6 s)
    assert timings["ended_job_down"] < 2.0  # an ended job is read at once
    assert timings["back"] < 5.0  # NOTIFY again


@pytest.mark.postgres
def test_a_silently_dead_listener_is_noticed_and_replaced(hub_tuned: None) -> None:
    first, second = queue_prediction(), queue_prediction()

    async def scenario() -> float:
        hub = completion_hub()
        assert await latency_after_the_job_ends(first) < 10  # NOTIFY, not the re-read
        [backend] = await run_in_db_thread(listener_pids)
        os.kill(backend, signal.SIGSTOP)  # the socket stays open; nothing answers
        try:
            latency = await latency_after_the_job_ends(second)
            await until(hub.listening.is_set, 10, "a new listener connection")
            # A new connection listens; the frozen backend lingers until it runs again.
            assert set(await run_in_db_thread(listener_pids)) - {backend}
        finally:
            os.kill(backend, signal.SIGCONT)
        await hub.close()
        return latency

    latency = asyncio.run(scenario())
    print(f"waiter returned {latency:.2f}s after its job ended, listener frozen")
    # Ping interval + ping timeout + the poll (about 2 s); without the ping: the 30 s
    # safety re-read. The bound tells them apart with room for a loaded machine.
    assert latency < 10


@pytest.mark.postgres
@pytest.mark.e2e
def test_the_dispatchers_listener_reconnects_and_wakes_it_again(start_dispatcher) -> None:
    # Only NOTIFY can wake this dispatcher promptly: its fallback poll is 30 s away.
    dispatcher = start_dispatcher(devices=1, ZYPHER_IDLE_POLL_SECONDS="30")
    owner = User.objects.create(username="woken")
    wait_until(listener_pids, 20, "the dispatcher to listen")

    def claimed_after(tag: str) -> float:
        """Seconds from submitting a job to its claim (what NOTIFY speeds up)."""
        [job], _ = submit_jobs(owner, [JobSpec("sleep", {"seconds": 0.01, "tag": tag})])
        started = time.monotonic()
        wait_until(lambda: Job.objects.get(pk=job.pk).status != "queued", 10, f"job {tag}")
        claimed = time.monotonic() - started
        wait_until(lambda: Job.objects.get(pk=job.pk).status == "succeeded", 30, f"job {tag}")
        return claimed

    assert claimed_after("before") < 10  # NOTIFY; without it, the 30 s poll
    [old] = terminate_listeners()
    wait_until(lambda: listener_pids() and old not in listener_pids(), 20, "a new listener")
    time.sleep(1.5)  # past the wake-up a reconnect gives: only NOTIFY can wake it now
    assert claimed_after("after") < 10
    assert dispatcher.process.poll() is None
