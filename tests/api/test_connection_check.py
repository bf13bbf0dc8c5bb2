"""The web workers' pool check spares the round trip, not the safety (issue 16).

A connection given back moments ago and quiet is handed out without the empty query
psycopg-pool's own check sends on every checkout; one whose session the server ended is
still caught and replaced, not handed to a request (jobs.api.connection_check).
"""

from __future__ import annotations

import select
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from jobs.api.connection_check import check_connection, note_returns
from tests.support.processes import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def dsn() -> str:
    settings = connection.settings_dict
    return (
        f"host={settings['HOST']} port={settings['PORT']} dbname={settings['NAME']} "
        f"user={settings['USER']}"
    )


@pytest.fixture
def pool() -> Iterator[ConnectionPool[psycopg.Connection[object]]]:
    with ConnectionPool(
        dsn(),
        min_size=1,
        max_size=1,
        check=check_connection,
        kwargs={"autocommit": True},
        timeout=10,
    ) as opened:
        note_returns(opened)
        yield opened


def last_query(pid: int) -> str:
    with psycopg.connect(dsn(), autocommit=True) as observer:
        row = observer.execute(
            "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_a_connection_just_given_back_is_handed_out_without_a_query(pool: ConnectionPool) -> None:
    with pool.connection() as first:
        pid = first.info.backend_pid
        first.execute("SELECT 'the request''s last query'")
    with pool.connection() as again:
        assert again.info.backend_pid == pid
        # Django's check (ConnectionPool.check_connection) would have sent "" here.
        assert last_query(pid) == "SELECT 'the request''s last query'"


def test_a_connection_the_server_ended_is_replaced_not_handed_out(pool: ConnectionPool) -> None:
    with pool.connection() as first:
        pid = first.info.backend_pid
        socket = first.fileno()
    with psycopg.connect(dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    # The server's goodbye reaches the idle connection's socket.
    wait_until(lambda: bool(select.select([socket], [], [], 0)[0]), 10, "the session to end")
    with pool.connection() as handed_out:
        assert handed_out.execute("SELECT 1").fetchone() == (1,)
        assert handed_out.info.backend_pid != pid


def test_a_connection_is_back_in_the_pool_when_the_request_gives_it_back(
    pool: ConnectionPool,
) -> None:
    # The return runs in the thread that gives the connection back (no `reset`, which
    # would hand it to the pool's worker thread), so the next request finds it at once.
    for _ in range(20):
        connection = pool.getconn()
        assert pool.get_stats()["pool_available"] == 0
        pool.putconn(connection)
        assert pool.get_stats()["pool_available"] == 1
        assert connection._zypher_returned_at > 0  # type: ignore[attr-defined]
