"""The local devices' settle-and-claim from the event loop (PostgreSQL; issue 16).

The dispatcher's hottest call, `zypher_finish_and_claim`, runs on async psycopg
connections of its own instead of in a database thread: a device's idle gap then has
no hop from the loop to a thread and back (two thread wake-ups, each a wait for a CPU on
a busy machine), and the statement is prepared once per connection instead of parsed and
planned on each call. Everything else (the claims of idle devices, leases, the reaper)
stays in the threads. The answer is awaited until PostgreSQL has committed (autocommit:
the commit precedes the statement's end), so the fencing is the thread path's: the
device is sent its next job only after its claim committed.

Errors come out as Django's (`django.db.DatabaseError` and subclasses), as the thread
path's do, so the caller's retry while the database is away and `settle_outcome`'s
refused-outcome handling apply unchanged. A connection that failed is closed and opened
anew on the next call.

A call is bounded (`timeout`, the lease): a backend that never answers (frozen, waiting
for a lock, or behind a network that stopped forwarding, which TCP keepalives do not see
while a query is in flight) would otherwise hold its device and connection for ever. Past
the lease the job's outcome would be refused anyway (its lease is not renewed while it
settles), so the call is cancelled on the server, its connection closed, and it fails as
a lost connection: the caller retries it on a new one, and the fencing token refuses a
late commit of the abandoned call (a next job that call claimed goes back to the queue
when its lease runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

import psycopg
from django.db import DataError, IntegrityError, connection
from psycopg.types.string import TextLoader

from devices.dispatcher.slow_calls import CallSession, watched
from jobs.notifications import listener_conninfo
from jobs.queue import ClaimedJob, finish_and_claim_answer, finish_and_claim_statement

# Tests only (see devices.dispatcher.loop._TEST_CLAIM_GATE): an advisory lock key that a
# claim which found nothing waits for before its answer goes back.
_TEST_CLAIM_GATE = os.environ.get("ZYPHER_TEST_CLAIM_GATE", "")
# How the settler's sessions show in pg_stat_activity.
APPLICATION_NAME = "zypher-settle"
# A call given up is cancelled on the server within this, or left to end by itself.
CANCEL_SECONDS = 2.0


class LoopSettler:
    """`size` connections, each used by one settle at a time, opened on first use."""

    def __init__(self, size: int, timeout: float) -> None:
        self.timeout = timeout
        self.free: asyncio.Queue[psycopg.AsyncConnection[Any] | None] = asyncio.Queue()
        for _ in range(size):
            self.free.put_nowait(None)
        self.open: set[psycopg.AsyncConnection[Any]] = set()

    async def finish_and_claim_next(
        self,
        claim: ClaimedJob,
        device_name: str,
        *,
        succeeded: bool,
        duration: float,
        result: Any = None,
        error: str = "",
    ) -> tuple[bool, ClaimedJob | None]:
        """`jobs.queue.finish_and_claim_next` on one of the settler's connections."""
        sql, params = finish_and_claim_statement(
            claim,
            device_name,
            succeeded=succeeded,
            duration=duration,
            result=result,
            error=error,
        )
        rows = await self.execute(
            sql,
            params,
            lambda: f"finish_and_claim_next({claim.public_id!r}, {device_name!r})",
            gate_if_empty=True,
        )
        return finish_and_claim_answer(rows, claim.device_type)

    async def execute(
        self,
        sql: str,
        params: dict[str, Any],
        describe: Callable[[], str],
        gate_if_empty: bool = False,
    ) -> list[tuple[Any, ...]]:
        conn = await self.free.get()
        try:
            # Django's error classes, as the database thread's calls raise them.
            with connection.wrap_database_errors:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        autocommit=True,
                        **{**listener_conninfo(), "application_name": APPLICATION_NAME},
                    )
                    # JSON comes back as its text, as on Django's connections, which the
                    # answer's reader expects: psycopg's own loader would hand it a job's
                    # string input as a str, to be read as JSON text again.
                    for json_type in ("json", "jsonb"):
                        conn.adapters.register_loader(json_type, TextLoader)
                    self.open.add(conn)
                session = CallSession(conn.info.backend_pid)
                rows = await watched(self._answer(conn, sql, params), describe, session)
                if gate_if_empty and _TEST_CLAIM_GATE and rows and rows[0][1] is None:
                    key = int(_TEST_CLAIM_GATE)
                    await conn.execute("SELECT pg_advisory_lock_shared(%s)", [key])
                    await conn.execute("SELECT pg_advisory_unlock_shared(%s)", [key])
                return rows
        except (DataError, IntegrityError):
            raise  # this outcome refused: the connection stays usable, in autocommit
        except BaseException:
            # A lost connection, a cancelled call, or anything else (a prepared statement
            # whose function changed its result type under it): the next call opens another.
            if conn is not None:
                self.open.discard(conn)
                with contextlib.suppress(Exception):
                    await conn.close()
                conn = None
            raise
        finally:
            self.free.put_nowait(conn)

    async def _answer(
        self, conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The statement's rows, or a lost connection's error after `timeout` seconds."""

        async def run() -> list[tuple[Any, ...]]:
            async with conn.cursor() as cursor:
                await cursor.execute(sql, params, prepare=True)
                return await cursor.fetchall()

        call = asyncio.ensure_future(run())
        try:
            done, _ = await asyncio.wait({call}, timeout=self.timeout)
        finally:
            if not call.done():
                # Cancelled on the server first: a backend only dropped by its client
                # would go on waiting (for a lock, say) and run the abandoned call later,
                # one more connection each lease. Bounded: the cancel request takes a
                # connection of its own, which may hang too.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.cancel_safe(timeout=CANCEL_SECONDS), CANCEL_SECONDS)
                # Then closed: the call ends at once (psycopg would otherwise wait for a
                # frozen backend to answer its cancellation).
                await conn.close()
                call.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait({call}, timeout=1.0)
        if not done:
            raise psycopg.OperationalError(
                f"no answer to the settle within {self.timeout:g}s; its connection closed"
            )
        return call.result()

    async def close(self) -> None:
        for conn in list(self.open):
            with contextlib.suppress(Exception):
                await conn.close()
        self.open.clear()
