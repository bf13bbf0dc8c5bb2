"""`CallSession.note_backend` names the session the call will run in, and `describe_call`
shows a call readably and briefly."""

from __future__ import annotations

from functools import partial

import pytest
from django.db import connection

from devices.dispatcher.loop import Dispatcher
from devices.dispatcher.slow_calls import CallSession, describe_call
from tests.support.sessions import run_at_once


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_noted_session_is_the_calls_after_the_server_ended_the_last_one() -> None:
    def calls() -> None:
        session = CallSession()
        first = Dispatcher._in_db_thread(backend_pid, (), session)
        # An operator (or a restart) ends the session the persistent connection holds.
        assert not run_at_once([lambda: end_backend(first)])
        ran_in = Dispatcher._in_db_thread(backend_pid, (), session)
        answer.append((first, session.backend_pid, ran_in))

    def end_backend(pid: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

    # In threads of their own: their own connections, outside any transaction.
    answer: list[tuple[int, int | None, int]] = []
    assert not run_at_once([calls])
    [(first, noted, ran_in)] = answer
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
