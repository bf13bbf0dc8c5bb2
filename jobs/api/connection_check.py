"""The web workers' check of a pooled PostgreSQL connection, without a round trip when it
can be spared (zypher/settings.py and zypher/asgi.py give these to Django's psycopg pool).

psycopg-pool's own check sends an empty query on every checkout: one more round trip per
request. Here a connection given back less than `RECENT_SECONDS` ago is handed out
unchecked unless its socket has something to read. An idle connection has nothing to
read: a server that ends the session (a restart, `pg_terminate_backend`, an idle
timeout) sends an error and closes the socket, which makes it readable at once, and
that connection gets the full check, fails it and is replaced. A connection idle
longer gets the full check as before, since a peer that vanished without closing
(a network cut) is only found by talking to it. A connection that breaks in use is
discarded by the pool when it is given back (its state is no longer known).
"""

from __future__ import annotations

import select
import time
from typing import Any

from django.db import connections
from psycopg import AsyncConnection, Connection
from psycopg_pool import ConnectionPool

RECENT_SECONDS = 5.0


def note_returns(pool: ConnectionPool[Any]) -> None:
    """Remember when each connection is given back, in the thread that gives it back.

    psycopg-pool's `reset` callback could do it, but a pool with a `reset` hands every
    return to its worker thread: one more thread wake-up per request, and the connection
    is not back in the pool until that thread has run. Django gives a connection back
    through `connection._pool.putconn`, so an attribute of the pool catches every return.
    """
    give_back = pool.putconn

    def putconn(connection: Any) -> None:
        connection._zypher_returned_at = time.monotonic()
        give_back(connection)

    pool.putconn = putconn  # type: ignore[method-assign,assignment]


def check_connection(connection: Connection[object]) -> None:
    """The pool's `check` callback: raise if the connection does not work."""
    returned_at = getattr(connection, "_zypher_returned_at", None)
    if (
        returned_at is not None
        and time.monotonic() - returned_at < RECENT_SECONDS
        and not has_input(connection)
    ):
        return
    ConnectionPool.check_connection(connection)


def has_input(connection: Connection[Any] | AsyncConnection[Any]) -> bool:
    try:
        poller = select.poll()
        poller.register(connection.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except Exception:
        return True  # no usable socket: let the full check say so


def install_pool_check() -> bool:
    """Give the default database's pool (if it has one) `check_connection` as its check.

    Django passes the pool its own check (`CONN_HEALTH_CHECKS`) and refuses another in
    OPTIONS, so the web server's entry point swaps it here, before the first checkout;
    psycopg-pool keeps it in `_check`. Returns whether there was a pool.
    """
    pool = getattr(connections["default"], "pool", None)
    if pool is None:
        return False
    note_returns(pool)
    pool._check = check_connection
    return True
