"""Several database sessions at once, for tests of queue state under concurrency.

Each worker runs in a thread with its own Django connection, so on PostgreSQL each is a
backend of its own and their statements really interleave and wait on each other's locks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connection, connections


def run_at_once(workers: list[Callable[[], None]]) -> list[BaseException]:
    """Run each worker in a thread with its own connection; return what they raised."""
    failures: list[BaseException] = []
    start = threading.Barrier(len(workers))

    def body(work: Callable[[], None]) -> None:
        try:
            start.wait()
            work()
        except BaseException as failure:  # noqa: BLE001 - reported to the test
            failures.append(failure)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return failures


def sessions_waiting_on_locks() -> int:
    """How many sessions of this database wait for a lock now (PostgreSQL)."""
    with connection.cursor() as cursor:
        # Inside a transaction pg_stat_activity is read once and kept: read it afresh.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])
