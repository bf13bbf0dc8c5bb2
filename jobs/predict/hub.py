"""Predictions: jobs of kind `predict`, submitted through the fair queue and awaited.

A synchronous `POST /predict` is "submit, then wait for the job to end"; it never runs
the model in the web process and never holds a device. Waiting is cheap because it is
an asyncio future, not a thread: `CompletionHub` (one per event loop, i.e. per web
process under the ASGI server) keeps the futures of all waiting requests by job id and
resolves them when their job reaches a final status:

* on PostgreSQL, one `LISTEN zypher_done` connection per hub, opened on first use and
  reopened when lost; `jobs.queue` sends `NOTIFY zypher_done, '<public_id>'` in the
  transaction that ends a job (finish, fail, cancel), so a waiter wakes within
  milliseconds of the commit. Each waiter is also re-read every `SAFETY_RECHECK_SECONDS`
  and everyone is re-read after a reconnect, so a lost notification costs a delay,
  never a hang. While that connection is down (or found dead by its ping, see
  `jobs.notifications`), waiters fall back at once to the poll below, and go back to
  NOTIFY when it is up again;
* on SQLite (no NOTIFY), a poll with per-waiter backoff (`POLL_FIRST_SECONDS` doubling
  to `POLL_MAX_SECONDS`), batched: one `SELECT … WHERE public_id IN (…)` per tick for
  all waiters that are due, whatever their number.

The ORM is synchronous: every database call here runs in a small dedicated thread pool
(`DB_THREADS` per process), so 1,000 waiting requests do not mean 1,000 threads or
1,000 connections. A request that is cancelled (the client disconnected) only removes
its future: the job goes on and its result stays readable by `GET /predict/<id>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections

from jobs.models import FINAL_STATUSES, Job, User
from jobs.notifications import notifications
from jobs.queue import DONE_CHANNEL, JobSpec, NamedUser, submit_jobs

log = logging.getLogger("zypher.predict")
R = TypeVar("R")

PREDICT_KIND = "predict"
ASYNC_MODE_ON = ("true", "1", "yes")
ASYNC_MODE_OFF = ("false", "0", "no")

DB_THREADS = 8  # threads (and so database connections) per web process for /predict
POLL_FIRST_SECONDS = 0.01  # SQLite: first re-read of a waiting job, then doubling…
POLL_MAX_SECONDS = 0.2  # …up to this interval
SAFETY_RECHECK_SECONDS = 30.0  # PostgreSQL: re-read a waiting job this often regardless
LISTEN_READY_SECONDS = 2.0  # how long the first waiters wait for the first LISTEN attempt
RECONNECT_SECONDS = 1.0
LISTEN_PING_SECONDS = 5.0  # the LISTEN connection proves itself alive this often…
LISTEN_PING_TIMEOUT_SECONDS = 5.0  # …or is replaced

_db_executor = ThreadPoolExecutor(max_workers=DB_THREADS, thread_name_prefix="predict-db")


def _with_connection_hygiene(function: Callable[..., R], *args: Any) -> R:
    # What Django does around a request, for a call outside any request's thread.
    close_old_connections()
    try:
        return function(*args)
    finally:
        close_old_connections()


async def run_in_db_thread(function: Callable[..., R], *args: Any) -> R:
    """Run a synchronous ORM call in the /predict thread pool."""
    call = sync_to_async(_with_connection_hygiene, thread_sensitive=False, executor=_db_executor)
    return await call(function, *args)


def close_db_connections() -> None:
    """Close the database connections of the /predict threads (for tests that drop the
    database; a web process keeps them, as Django keeps a request thread's)."""
    barrier = threading.Barrier(DB_THREADS)

    def close_in_this_thread() -> None:
        barrier.wait(timeout=10)  # one task per thread: all of them must be running at once
        connections.close_all()

    for done in [_db_executor.submit(close_in_this_thread) for _ in range(DB_THREADS)]:
        done.result()


class AsyncModeError(ValueError):
    """An `Async-Mode` header value that is neither on nor off."""


def parse_async_mode(value: str | None) -> bool:
    """True for `true`/`1`/`yes`, False for `false`/`0`/`no` or no header (any case)."""
    if value is None:
        return False
    normalised = value.strip().lower()
    if normalised in ASYNC_MODE_ON:
        return True
    if normalised in ASYNC_MODE_OFF:
        return False
    raise AsyncModeError(
        f"Invalid Async-Mode header {value!r}: use true, 1 or yes for asynchronous mode, "
        "false, 0 or no (or no header) for synchronous mode."
    )


def submit_prediction(
    owner: User | NamedUser, input: str, *, idempotency_key: str | None = None
) -> str:
    """Queue one prediction for `owner` through the fair queue; returns its public id."""
    spec = JobSpec(kind=PREDICT_KIND, input=input, device_type=settings.ZYPHER_LOCAL_DEVICE_TYPE)
    jobs, _ = submit_jobs(owner, [spec], idempotency_key=idempotency_key)
    return str(jobs[0].public_id)


@dataclass(frozen=True)
class PredictionState:
    """What a client may learn about a prediction."""

    prediction_id: str
    status: str
    output: Any = None
    error: str = ""

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def read_prediction(prediction_id: str, owner: User | None = None) -> PredictionState | None:
    """The prediction's state, or None for an unknown id (or another owner's, if `owner`)."""
    jobs = Job.objects.filter(public_id=prediction_id, kind=PREDICT_KIND)
    if owner is not None:
        jobs = jobs.filter(owner=owner)
    row = jobs.values("status", "result", "error").first()
    if row is None:
        return None
    return PredictionState(prediction_id, row["status"], row["result"], row["error"])


def _final_among(public_ids: list[str]) -> list[str]:
    """Which of these jobs have reached a final status (one query per 500 ids)."""
    found: list[str] = []
    for start in range(0, len(public_ids), 500):
        chunk = public_ids[start : start + 500]
        found += [
            str(public_id)
            for public_id in Job.objects.filter(
                public_id__in=chunk, status__in=list(FINAL_STATUSES)
            ).values_list("public_id", flat=True)
        ]
    return found


@dataclass
class _Waiter:
    futures: set[asyncio.Future[None]] = field(default_factory=set)
    next_check: float = 0.0
    interval: float = POLL_FIRST_SECONDS


class CompletionHub:
    """The waiting requests of one event loop, woken by NOTIFY or by a batched poll."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, use_notify: bool) -> None:
        self.loop = loop
        self.use_notify = use_notify
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        # Set once the first attempt to listen ended, up or not: from then on nobody
        # waits for the listener (while it is down, the poll covers every waiter).
        self._listen_settled = asyncio.Event()
        self._waiters: dict[str, _Waiter] = {}
        self._tick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def waiting(self) -> int:
        """How many jobs have at least one request waiting for them."""
        return len(self._waiters)

    def _start(self) -> None:
        if not self._tasks:
            self._tasks.append(asyncio.create_task(self._poll_loop(), name="predict-poll"))
            if self.use_notify:
                self._tasks.append(asyncio.create_task(self._listen_loop(), name="predict-listen"))

    def _polling_interval(self) -> tuple[float, float]:
        if self.use_notify and self.listening.is_set():
            return SAFETY_RECHECK_SECONDS, SAFETY_RECHECK_SECONDS
        return POLL_FIRST_SECONDS, POLL_MAX_SECONDS

    def register(self, public_id: str) -> asyncio.Future[None]:
        """A future resolved when `public_id` may have ended (the caller re-reads it)."""
        self._start()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = self._waiters.get(public_id)
        if waiter is None:
            first, _ = self._polling_interval()
            waiter = self._waiters[public_id] = _Waiter(
                next_check=time.monotonic() + first, interval=first
            )
            self._tick.set()
        waiter.futures.add(future)
        return future

    def unregister(self, public_id: str, future: asyncio.Future[None]) -> None:
        waiter = self._waiters.get(public_id)
        if waiter is None:
            return
        waiter.futures.discard(future)
        if not waiter.futures:
            del self._waiters[public_id]

    def wake(self, public_id: str) -> None:
        """The job ended (or may have): resolve every future waiting for it."""
        waiter = self._waiters.pop(public_id, None)
        if waiter is None:
            return
        for future in waiter.futures:
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        for public_id in list(self._waiters):
            self.wake(public_id)

    async def _poll_loop(self) -> None:
        while True:
            now = time.monotonic()
            due = [pid for pid, waiter in self._waiters.items() if waiter.next_check <= now]
            if due:
                try:
                    for public_id in await run_in_db_thread(_final_among, due):
                        self.wake(public_id)
                except Exception as exc:  # a database outage: keep the waiters, retry later
                    log.warning("polling waiting predictions failed: %s", str(exc)[:200])
                _, ceiling = self._polling_interval()
                now = time.monotonic()
                for public_id in due:
                    waiter = self._waiters.get(public_id)
                    if waiter is not None:
                        waiter.interval = min(waiter.interval * 2, ceiling)
                        waiter.next_check = now + waiter.interval
            self._tick.clear()
            next_check = min((w.next_check for w in self._waiters.values()), default=now + 3600)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), max(0.0, next_check - time.monotonic()))

    async def _listen_loop(self) -> None:
        def connected() -> None:
            self.listening.set()
            self._listen_settled.set()
            self.wake_all()  # anything that ended while we were not listening: re-read all

        def disconnected() -> None:
            self.listening.clear()
            self._listen_settled.set()
            self._reschedule_for_polling()

        async for public_id in notifications(
            DONE_CHANNEL,
            on_connect=connected,
            on_disconnect=disconnected,
            retry_seconds=RECONNECT_SECONDS,
            ping_seconds=LISTEN_PING_SECONDS,
            ping_timeout=LISTEN_PING_TIMEOUT_SECONDS,
        ):
            self.wake(public_id)

    def _reschedule_for_polling(self) -> None:
        # Without the listener, fall back to the SQLite-style poll until it is back.
        now = time.monotonic()
        for waiter in self._waiters.values():
            waiter.interval = POLL_FIRST_SECONDS
            waiter.next_check = min(waiter.next_check, now + POLL_FIRST_SECONDS)
        self._tick.set()

    async def ready(self) -> None:
        """On first use, wait (briefly) for the LISTEN connection, so that the first
        waiters are woken by NOTIFY rather than by the poll.

        Only the first attempt is awaited: once the listener has been up or failed,
        nobody waits for it, since the poll covers every waiter while it is down (waiting
        for a reconnect here added its delay to every wait loop; issue 12).
        """
        self._start()
        if self.use_notify and not self._listen_settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listen_settled.wait(), LISTEN_READY_SECONDS)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


_hubs: dict[int, CompletionHub] = {}


def completion_hub() -> CompletionHub:
    """The hub of the running event loop (one per web process under the ASGI server)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(id(loop))
    if hub is None or hub.loop is not loop:
        for key in [key for key, old in _hubs.items() if old.loop.is_closed()]:
            del _hubs[key]
        on_postgres = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
        hub = _hubs[id(loop)] = CompletionHub(loop, use_notify=on_postgres)
    return hub


async def wait_for_prediction(
    prediction_id: str, timeout: float, hub: CompletionHub | None = None
) -> PredictionState | None:
    """Wait up to `timeout` seconds for the prediction to end.

    Returns its final state, its current state if the time ran out (not final), or None
    if it does not exist. Cancelling the caller (a client that went away) leaves the
    job alone.
    """
    hub = hub or completion_hub()
    deadline = time.monotonic() + timeout
    while True:
        # Register before reading, so an end between the read and the wait still wakes us.
        future = hub.register(prediction_id)
        try:
            await hub.ready()
            state = await run_in_db_thread(read_prediction, prediction_id)
            if state is None or state.final:
                return state
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return state
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                return await run_in_db_thread(read_prediction, prediction_id)
        finally:
            hub.unregister(prediction_id, future)
