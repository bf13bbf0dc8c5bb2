"""`CallSession.note_backend` names the session the call will run in, and `describe_call`
shows a call readably and briefly."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import pytest
from django.db import connection

from devices.dispatcher.loop import Dispatcher
from devices.dispatcher.slow_calls import CallSession, describe_call


def in_a_thread(body: Any) -> Any:
    """`body()` in a thread of its own (its own connection, outside any transaction)."""
    answer: list[Any] = []

    def run() -> None:
        try:
            answer.append(body())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            answer.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return answer[0]


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_noted_session_is_the_calls_after_the_server_ended_the_last_one() -> None:
    def calls() -> tuple[int, int | None, int]:
        session = CallSession()
        first = Dispatcher._in_db_thread(backend_pid, (), session)
        # An operator (or a restart) ends the session the persistent connection holds.
        ender = threading.Thread(target=end_backend, args=(first,))
        ender.start()
        ender.join()
        ran_in = Dispatcher._in_db_thread(backend_pid, (), session)
        return first, session.backend_pid, ran_in

    def end_backend(pid: int) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        finally:
            connection.close()

    first, noted, ran_in = in_a_thread(calls)
    assert ran_in != first  # the persistent connection was found dead and replaced ...
    assert noted == ran_in  # ... and the warning would name the session the call runs in


def test_a_partial_is_described_by_its_function_and_plain_arguments() -> None:
    def release_job(job_id: int, token: int, reason: str) -> None: ...

    assert describe_call(partial(release_job, 7), (3, "gone")) == "release_job(7, 3, 'gone')"


def test_a_long_string_argument_is_shortened() -> None:
    def give_back(name: str, reason: str) -> None: ...

    described = describe_call(give_back, ("qpu-1", "x" * 100_000))
    assert len(described) < 200
    assert described.startswith("give_back('qpu-1', 'xxx")
