"""Database calls that take long are not silent (ZYPHER_SLOW_CALL_SECONDS).

A dispatcher's claim waits, as it must, for a pool row that another transaction holds;
an operator's session left open in a transaction would then stall the pool's devices
without a word. Each call the dispatcher awaits is `watched`: while it is pending it is
logged every interval, with the PostgreSQL session it runs in, whose blockers
`pg_blocking_pids` names.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection

log = logging.getLogger("zypher.dispatcher")

R = TypeVar("R")


class CallSession:
    """The PostgreSQL session a database call runs in, noted by its thread for the loop."""

    def __init__(self, backend_pid: int | None = None) -> None:
        self.backend_pid = backend_pid

    def note_backend(self) -> None:
        """In the database thread: open the connection as the call's first query would
        (the health check of a persistent connection first, which replaces one the server
        ended: noting its pid before that would name a dead session) and note its pid."""
        self.backend_pid = None  # not a previous attempt's session, if this one cannot connect
        if connection.vendor == "postgresql":
            connection.close_if_health_check_failed()
            connection.ensure_connection()
            self.backend_pid = connection.connection.info.backend_pid


# An argument's text in a slow call's warning is cut to this many characters (a reason
# string can hold a device's whole answer).
DESCRIBED_ARGUMENT_CHARS = 60


def describe_call(function: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """`claim_next('cpu', 'cpu-0', None)`: the function and its plain arguments (a
    partial's included, a long string's beginning)."""
    while isinstance(function, partial):
        args = (*function.args, *args)
        function = function.func
    shown = [
        repr(arg[:DESCRIBED_ARGUMENT_CHARS])
        + ("..." if len(arg) > DESCRIBED_ARGUMENT_CHARS else "")
        if isinstance(arg, str)
        else repr(arg)
        for arg in args
        if arg is None or isinstance(arg, str | int | float)
    ]
    return f"{getattr(function, '__name__', 'a database call')}({', '.join(shown)})"


async def watched(call: Awaitable[R], what: Callable[[], str], session: CallSession) -> R:
    """`await call`, with a warning each ZYPHER_SLOW_CALL_SECONDS it is still pending: a
    call waiting for a lock held by an open transaction elsewhere says so, naming its
    session, instead of stalling its devices without a word (0, or not a finite number:
    no warnings). `what()` describes the call, only when a warning is due: the claim and
    the settle are the dispatcher's hottest calls."""
    every = settings.ZYPHER_SLOW_CALL_SECONDS
    if not (0 < every < math.inf):  # NaN too
        return await call
    loop = asyncio.get_running_loop()
    started = time.monotonic()

    def warn() -> None:
        pid = session.backend_pid
        log.warning(
            "%s has waited %.0fs for the database%s",
            what(),
            time.monotonic() - started,
            f" (its session: pid {pid}; SELECT pg_blocking_pids({pid}) names the sessions "
            "it waits for)"
            if pid is not None
            else "",
        )
        timer[0] = loop.call_later(every, warn)

    timer = [loop.call_later(every, warn)]  # the next warning's, replaced by each warning
    try:
        return await call
    finally:
        timer[0].cancel()
