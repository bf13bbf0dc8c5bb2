"""The dispatcher behind `run_dispatcher`: an asyncio loop that hands jobs to devices.

One loop owns scheduling. Database work runs in dedicated threads (Django's ORM is
synchronous and its connection belongs to its thread): the local devices' claims and
settles in CLAIM_THREADS of their own, everything else in one more; on PostgreSQL the
local devices' settle-and-claim runs from the loop itself, on as many async connections
(`devices.dispatcher.settler`: no thread hop in a device's idle gap). Local devices are
worker processes; each holds at most one job. The loop:

* claims a job for every idle device (`jobs.queue.claim_next`), sends it to the worker;
* settles each outcome as soon as it arrives (`jobs.queue.finish_and_claim_next`, which
  the fencing token may refuse), each in a task of its own, so one device's settle and
  claim overlap another's (issue 16); a device is sent its next job only once that
  claim committed;
* renews the leases of the jobs it holds every lease/3 seconds, and requeues any job
  whose lease expired (a dispatcher that was killed or hung), every few seconds;
* replaces a worker that died, giving its job back to the queue;
* sleeps when there is nothing to do until a NOTIFY (PostgreSQL) or a short poll;
* hands jobs to remote agents and simulated devices, checks their health and requeues
  the job of a device that vanished (`devices.dispatcher.remote`);
* posts each finished program's results to its callback URL (`jobs.programs`);
* writes the latest progress its devices reported, coalesced (`jobs.progress`).
* with ZYPHER_PRUNE_AFTER_SECONDS set, deletes old ended jobs in small batches
  (`jobs.retention`).

Local devices are registered in the pool (`devices.models.Device`) while it runs.

SIGTERM or Ctrl-C: stop claiming, let running jobs finish for a grace period, requeue
what is still running, exit 0. A second signal requeues at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial, wraps
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from devices import pool
from devices.dispatcher.remote import RemoteDevices
from devices.dispatcher.settler import LoopSettler
from devices.dispatcher.slow_calls import CallSession, describe_call, watched
from devices.dispatcher.supervisor import supervise
from devices.dispatcher.worker import (
    JobOrder,
    JobOutcome,
    JobProgress,
    log_job_start,
    worker_main,
)
from jobs import invariants, retention
from jobs.api.errors import database_unavailable
from jobs.notifications import notifications
from jobs.programs import CallbackCourier
from jobs.progress import FLUSH_SECONDS, ProgressBuffer, normalised, save_progress
from jobs.queue import (
    NOTIFY_CHANNEL,
    ClaimedJob,
    claim_next,
    finish_and_claim_next,
    finish_job,
    release_job,
    renew_leases,
    requeue_expired_leases,
)
from jobs.results import settle_outcome, settle_outcome_async

log = logging.getLogger("zypher.dispatcher")
R = TypeVar("R")

_spawn = multiprocessing.get_context("spawn")


@dataclass
class LocalDevice:
    """A worker process and the job it runs, if any."""

    name: str
    device_type: str
    process: Any = None
    connection: Any = None
    claim: ClaimedJob | None = None
    started: float = 0.0
    outcomes: list[JobOutcome] = field(default_factory=list)
    # Its last outcome is being settled (and its next job claimed): not idle meanwhile.
    settling: bool = False
    readable_at: float = 0.0  # its pipe's last outcome arrived (ZYPHER_BENCH_GAP_TRACE)

    @property
    def idle(self) -> bool:
        return (
            self.claim is None
            and not self.settling
            and self.process is not None
            and self.process.is_alive()
        )


def _finish_only(claim: ClaimedJob, **outcome: Any) -> tuple[bool, None]:
    """finish_job in finish_and_claim_next's shape: (accepted, no next claim)."""
    return finish_job(claim, **outcome), None


# Tests only: an advisory lock key. A claim that found nothing waits, in its database
# thread, for that lock (shared) before its answer goes back to the loop, so a test that
# holds it can deliver a NOTIFY while an empty claim is in flight (PostgreSQL).
_TEST_CLAIM_GATE = os.environ.get("ZYPHER_TEST_CLAIM_GATE", "")


def _claiming(function: Callable[..., R], empty: Callable[[R], bool]) -> Callable[..., R]:
    """`function`, followed by the test gate when its claim came back empty."""
    if not _TEST_CLAIM_GATE:
        return function

    @wraps(function)
    def gated(*args: Any, **kwargs: Any) -> R:
        answer = function(*args, **kwargs)
        if empty(answer):
            with connection.cursor() as cursor:
                key = int(_TEST_CLAIM_GATE)
                cursor.execute("SELECT pg_advisory_lock_shared(%s)", [key])
                cursor.execute("SELECT pg_advisory_unlock_shared(%s)", [key])
        return answer

    return gated


# Bench only (bench_core's gap breakdown): a path. Each settle that sends a next job
# records wall-clock stamps along its way (pipe readable, settle task running, database
# thread start and end, back on the loop, order sent), written there at exit.
_GAP_TRACE = os.environ.get("ZYPHER_BENCH_GAP_TRACE", "")


def _stamped(function: Callable[..., R], stamps: list[float]) -> Callable[..., R]:
    @wraps(function)
    def stamped(*args: Any, **kwargs: Any) -> R:
        stamps.append(time.time())
        try:
            return function(*args, **kwargs)
        finally:
            stamps.append(time.time())

    return stamped


# After the grace period, this long to give back what is still running; then the process
# exits even if the database never answered (the leases hand its jobs back).
CLEANUP_SECONDS = 5.0
# A second stop signal: gone within this long.
SECOND_SIGNAL_SECONDS = 2.0
# The watchdog's margin past the deadline before it ends the process itself.
WATCHDOG_MARGIN_SECONDS = 3.0
# Database threads (one connection each) for the local devices' claims and settles: two
# let one device's settle-and-claim run while another's result crosses the network or
# Python builds its call; more would mostly queue on the pool's row lock, which every
# claim takes (issue 16).
CLAIM_THREADS = 2


class Dispatcher:
    def __init__(self, device_types: list[tuple[str, int]], name: str | None = None) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.devices = [
            LocalDevice(name=f"{self.name}-{device_type}-{index}", device_type=device_type)
            for device_type, count in device_types
            for index in range(count)
        ]
        self.db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zypher-db")
        self.claim_threads = self.db_thread
        if connection.vendor == "postgresql":
            self.claim_threads = ThreadPoolExecutor(
                max_workers=max(1, min(CLAIM_THREADS, len(self.devices))),
                thread_name_prefix="zypher-claim",
            )
        # (SQLite takes one writer at a time: a second connection would only wait for its
        # lock, and hold it more often against other dispatchers' lease renewals.)
        # PostgreSQL: the local devices' settle-and-claim runs from the loop on connections
        # of its own, as many as the claim threads (devices.dispatcher.settler).
        self.settler: LoopSettler | None = None
        if connection.vendor == "postgresql" and self.devices:
            self.settler = LoopSettler(
                max(1, min(CLAIM_THREADS, len(self.devices))), settings.ZYPHER_LEASE_SECONDS
            )
        # Settles in flight (a task each): a stop waits for them like for running jobs.
        self.settling: set[asyncio.Task[None]] = set()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.stop_requested = asyncio.Event()
        self.stop_now = False
        # Monotonic time by which the process is gone, set at the first stop signal.
        self.exit_by = math.inf
        self.failure: str | None = None  # why the dispatcher gave up (exit status 1)
        self.empty_pools: set[str] = set()
        # Bumped by every wake: a claim that comes back empty marks its pool empty only if
        # no wake came while it was in flight (a NOTIFY for a job its snapshot missed).
        self.wakes = 0
        self.gap_trace: list[list[float]] | None = [] if _GAP_TRACE else None
        self.lease_seconds = settings.ZYPHER_LEASE_SECONDS
        self.progress = ProgressBuffer()
        self.remote = RemoteDevices(
            self.db, self.stop_requested, self.lease_seconds, progress=self.progress
        )
        self.callbacks = CallbackCourier()

    @property
    def stopping(self) -> bool:
        return self.stop_requested.is_set()

    # --- database calls, all in one thread, retried while the database is away ---

    async def db(
        self,
        function: Callable[..., R],
        *args: Any,
        retry: bool = True,
        claim: bool = False,
        executor: ThreadPoolExecutor | None = None,
    ) -> R:
        """Run `function(*args)` in the database thread (or one of `executor`'s). While
        the database is unreachable the call is retried until the dispatcher's exit
        deadline; with `retry=False` not at all, and a `claim` (useful only while running)
        not after a stop was asked."""
        loop = asyncio.get_running_loop()
        session = CallSession()
        return await self._retrying(
            lambda: watched(
                loop.run_in_executor(
                    executor or self.db_thread, self._in_db_thread, function, args, session
                ),
                lambda: describe_call(function, args),
                session,
            ),
            retry=retry,
            claim=claim,
        )

    async def _retrying(
        self, attempt: Callable[[], Awaitable[R]], *, retry: bool = True, claim: bool = False
    ) -> R:
        """`await attempt()`, again while the database is unreachable (see `db`)."""
        delay = 0.5
        while True:
            try:
                return await attempt()
            except DatabaseError as exc:
                # Lost connection or read-only session (issue 8): wait it out.
                remaining = self.exit_by - time.monotonic()
                if (
                    not retry
                    or not database_unavailable(exc)
                    or remaining <= delay
                    or (claim and self.stopping)
                ):
                    raise
                log.warning(
                    "database unavailable (%s); retrying in %.1fs", str(exc).strip()[:120], delay
                )
                if claim:  # a stop ends the wait at once
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self.stop_requested.wait()
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def db_before_exit(self, function: Callable[..., R], *args: Any) -> R | None:
        """A database call of the shutdown: bounded by the exit deadline. None if it could
        not be made (the database away): what it would have given back, the leases do."""
        remaining = self.exit_by - time.monotonic()
        try:
            return await asyncio.wait_for(
                self.db(function, *args, retry=False), max(remaining, 0.1)
            )
        except (TimeoutError, DatabaseError) as exc:
            log.warning(
                "%s not done before exit (%s); leases hand back what it would have",
                getattr(function, "__name__", "database call"),
                str(exc).strip()[:120] or type(exc).__name__,
            )
            return None

    @staticmethod
    def _in_db_thread(function: Callable[..., R], args: tuple[Any, ...], session: CallSession) -> R:
        close_old_connections()
        try:
            session.note_backend()
            return function(*args)
        except DatabaseError as exc:
            if database_unavailable(exc):
                connection.close()  # reconnect on the next call (a read-only session stays so)
            raise

    # --- workers ---

    def start_worker(self, device: LocalDevice) -> None:
        parent_end, child_end = _spawn.Pipe()
        process = _spawn.Process(
            target=worker_main, args=(child_end, os.getpid()), name=device.name, daemon=True
        )
        process.start()
        child_end.close()  # so that the parent sees EOF when the child dies
        device.process, device.connection = process, parent_end
        loop = asyncio.get_running_loop()
        loop.add_reader(parent_end.fileno(), self._on_worker_readable, device)
        log.info("device %s (%s) started, pid %s", device.name, device.device_type, process.pid)

    def _on_worker_readable(self, device: LocalDevice) -> None:
        if self.gap_trace is not None:
            device.readable_at = time.time()
        try:
            outcome = device.connection.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(device.connection.fileno())
            self.events.put_nowait(("died", device))
            return
        if isinstance(outcome, JobProgress):
            self._record_progress(device, outcome)
            return
        # Settled at once, in a task: no hop through the event queue, and another
        # device's outcome need not wait for this one's commit.
        self._start_settle(device, outcome)

    def _start_settle(self, device: LocalDevice, outcome: JobOutcome) -> None:
        device.settling = True
        task = asyncio.get_running_loop().create_task(self._settle_task(device, outcome))
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def _settle_task(self, device: LocalDevice, outcome: JobOutcome) -> None:
        try:
            await self.settle(device, outcome)
        except Exception:  # one job's outcome can never end the dispatcher
            log.exception("settling the outcome of job %s failed", outcome.job_id)
        finally:
            device.settling = False
            if device.idle or self.stopping:  # the main loop fills it, or sees it done
                self.events.put_nowait(("settled", device))

    def _record_progress(self, device: LocalDevice, report: JobProgress) -> None:
        # Only for the job the device holds now: one that already ended is ignored.
        claim = device.claim
        if claim is not None and (claim.id, claim.fencing_token) == (
            report.job_id,
            report.fencing_token,
        ):
            key = (claim.public_id, claim.fencing_token, device.name)
            self.progress.record(key, normalised(report.fraction, report.message))

    # --- the loop ---

    async def run(self) -> int:
        """Run until stopped; the exit status: 0 after a stop signal, 1 after a failure."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.request_stop))
        for device in self.devices:
            self.start_worker(device)
        local = [(device.name, device.device_type) for device in self.devices]
        self.remote.start()
        background: list[asyncio.Task[None]] = []
        try:
            await self.db(pool.register_local_devices, self.name, local)
            log.info(
                "dispatcher %s running %d local device(s); lease %.0fs",
                self.name,
                len(self.devices),
                self.lease_seconds,
            )
            tasks = {
                "lease-renewal": self.keep_leases,
                "reaper": self.reap_expired,
                "callbacks": self.deliver_callbacks,
                "queue-check": self.check_queue,
                "progress": self.flush_progress,
                **self.remote.tasks(),
            }
            if connection.vendor == "postgresql":
                tasks["listen"] = self.listen_for_work
            if retention.periodic_age() is not None:
                tasks["prune"] = self.prune_ended_jobs
            background = [
                asyncio.create_task(supervise(name, task, self.give_up), name=name)
                for name, task in tasks.items()
            ]
            await self.main_loop()
        except Exception:
            log.critical("the dispatcher's main loop failed; stopping", exc_info=True)
            self.failure = self.failure or "the main loop failed"
            self.request_stop()
        finally:
            for task in background:
                task.cancel()
            if background:  # bounded: a task that ignores its cancellation must not hold us
                await asyncio.wait(background, timeout=1.0)
            await self.remote.shut_down(self.db_before_exit)
            if self.settling:  # each hands its next claim back, the dispatcher stopping
                await asyncio.wait(
                    set(self.settling), timeout=max(self.exit_by - time.monotonic(), 0.1)
                )
            await self.shut_down_devices()
            names = [device.name for device in self.devices]
            await self.db_before_exit(pool.unregister_local_devices, names)
            # A call stuck in the database thread must not hold the exit (see run_dispatcher).
            self.db_thread.shutdown(wait=False, cancel_futures=True)
            self.claim_threads.shutdown(wait=False, cancel_futures=True)
            if self.settler is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.settler.close(), 1.0)
        if self.gap_trace:
            with open(_GAP_TRACE, "w") as out:
                out.writelines(" ".join(f"{t:.6f}" for t in row) + "\n" for row in self.gap_trace)
        if self.failure is not None:
            log.critical("dispatcher %s stopped: %s; exit status 1", self.name, self.failure)
            return 1
        log.info("dispatcher %s stopped", self.name)
        return 0

    def request_stop(self) -> None:
        now = time.monotonic()
        if self.stopping:
            log.info("second stop signal: requeueing running jobs now")
            self.stop_now = True
            self.exit_by = min(self.exit_by, now + SECOND_SIGNAL_SECONDS)
        else:
            log.info("stop requested: no new claims; waiting for running jobs")
            # A bound, not a wait: the main loop returns as soon as no job runs here (a claim
            # in flight when the signal came counts as running).
            grace = settings.ZYPHER_SHUTDOWN_GRACE_SECONDS
            self.exit_by = now + grace + CLEANUP_SECONDS
            self.stop_requested.set()
            threading.Thread(
                target=self._watchdog, name="zypher-stop-watchdog", daemon=True
            ).start()
        self.events.put_nowait(("wake", None))

    def give_up(self, reason: str) -> None:
        """A background task keeps crashing: stop, and exit non-zero (never half alive)."""
        self.failure = self.failure or reason
        self.request_stop()

    def _watchdog(self) -> None:
        """Ends the process if the orderly stop overran its deadline (a call that never
        returns): a dispatcher that was told to stop never stays."""
        while time.monotonic() < self.exit_by + WATCHDOG_MARGIN_SECONDS:
            time.sleep(0.1)
        log.critical("dispatcher %s did not stop by its deadline; exiting now", self.name)
        exit_now(1)

    async def main_loop(self) -> None:
        grace_deadline: float | None = None
        while True:
            if not self.stopping:
                try:
                    await self.fill_idle_devices()
                except DatabaseError:
                    log.exception("claiming failed; trying again at the next wake-up")
            else:
                busy = [
                    device for device in self.devices if device.claim is not None or device.settling
                ]
                if grace_deadline is None:
                    grace_deadline = self.exit_by - CLEANUP_SECONDS
                if not busy or self.stop_now or time.monotonic() >= grace_deadline:
                    return
            try:
                kind, payload = self.events.get_nowait()  # no timer when one is waiting
            except asyncio.QueueEmpty:
                try:
                    kind, payload = await asyncio.wait_for(
                        self.events.get(), timeout=settings.ZYPHER_IDLE_POLL_SECONDS
                    )
                except TimeoutError:
                    self.wake()
                    continue
            try:
                await self.handle_event(kind, payload)
            except Exception:  # one job's event can never end the loop
                log.exception("handling %s failed", kind)

    async def handle_event(self, kind: str, payload: Any) -> None:
        if kind == "died":
            await self.replace_dead_worker(payload)
        elif kind == "wake":
            log.debug("woken: looking for queued work again")
            self.wake()

    def wake(self) -> None:
        """Every pool may have work again: claims in flight must not mark one empty."""
        self.wakes += 1
        self.empty_pools.clear()
        self.remote.wake.set()

    def mark_empty(self, device_type: str, wakes_then: int) -> None:
        """A claim that started at wake generation `wakes_then` found nothing."""
        if self.wakes == wakes_then:
            self.empty_pools.add(device_type)

    async def fill_idle_devices(self) -> None:
        for device in self.devices:
            if not device.idle or device.device_type in self.empty_pools:
                continue
            if self.stopping:
                return
            wakes_then = self.wakes
            claim = await self.db(
                _claiming(claim_next, lambda claim: claim is None),
                device.device_type,
                device.name,
                claim=True,
                executor=self.claim_threads,
            )
            if claim is None:
                self.mark_empty(device.device_type, wakes_then)
                continue
            self.send(device, claim)

    def send(self, device: LocalDevice, claim: ClaimedJob) -> None:
        if self.order(device, claim):
            log_job_start(log, claim, device.name)

    def order(self, device: LocalDevice, claim: ClaimedJob) -> bool:
        """Hand `claim` (committed) to the device's worker; False if it could not be sent."""
        device.claim, device.started = claim, time.monotonic()
        try:
            device.connection.send(JobOrder(claim.id, claim.fencing_token, claim.kind, claim.input))
        except OSError as exc:
            # The worker died while the claim was made: the claim stays the device's, so
            # the worker's end (its EOF, "died") gives the job back and replaces it.
            log.warning(
                "job %s not sent to device %s (%s); giving it back",
                claim.public_id,
                device.name,
                exc,
            )
            device.process.kill()  # a worker that cannot be written to is done for
            return False
        return True

    async def settle(self, device: LocalDevice, outcome: JobOutcome) -> None:
        """Record an outcome and, unless stopping, claim the device's next job in the same
        transaction, so the device waits for one commit between jobs."""
        claim = device.claim
        device.claim = None
        if claim is None or claim.id != outcome.job_id:
            return
        claim_next_too = not (self.stopping or device.device_type in self.empty_pools)
        wakes_then = self.wakes
        stamps = None if self.gap_trace is None else [device.readable_at, time.time()]
        record: Callable[..., tuple[bool, ClaimedJob | None]]
        if claim_next_too:
            record = partial(finish_and_claim_next, claim, device.name)
        else:
            record = partial(_finish_only, claim)
        call = partial(
            _claiming(settle_outcome, lambda written: written[1] is None),
            record,
            succeeded=outcome.succeeded,
            duration=outcome.duration,
            result=outcome.result,
            error=outcome.error,
        )
        try:
            if claim_next_too and self.settler is not None:
                written = await self._retrying(
                    partial(self._settle_on_loop, self.settler, claim, device, outcome, stamps)
                )
            else:
                written = await self.db(
                    call if stamps is None else _stamped(call, stamps),
                    executor=self.claim_threads,
                )
        except DatabaseError as exc:
            # Not recorded (the database away past the deadline, or an error not about
            # this job): its lease is no longer renewed, so the reaper requeues it.
            log.warning("job %s: outcome not recorded (%s)", claim.public_id, exc)
            return
        accepted, next_claim = written
        state = "succeeded" if outcome.succeeded else f"failed ({outcome.error[:200]})"
        if not accepted:
            state = "result refused: lease lost to another holder"
        end_line = (
            "end job %s user=%s kind=%s device=%s duration=%.3fs %s",
            claim.public_id,
            claim.owner,
            claim.kind,
            device.name,
            outcome.duration,
            state,
        )
        if stamps is not None:
            stamps.append(time.time())
        if next_claim is not None and not self.stopping:
            sent = self.order(device, next_claim)  # first: the device starts, then we log
            if stamps is not None and self.gap_trace is not None:
                self.gap_trace.append([*stamps, time.time()])
            log.info(*end_line)
            if sent:
                log_job_start(log, next_claim, device.name)
            return
        log.info(*end_line)
        if next_claim is not None:  # stopped while the claim was in flight: hand it back
            await self.db_before_exit(
                release_job, next_claim.id, next_claim.fencing_token, "dispatcher stopping"
            )
        elif not self.stopping and claim_next_too:
            self.mark_empty(device.device_type, wakes_then)

    @staticmethod
    async def _settle_on_loop(
        settler: LoopSettler,
        claim: ClaimedJob,
        device: LocalDevice,
        outcome: JobOutcome,
        stamps: list[float] | None,
    ) -> tuple[bool, ClaimedJob | None]:
        """The settle-and-claim from the loop (PostgreSQL): no database thread to hop to."""
        if stamps is not None:
            stamps.append(time.time())
        try:
            return await settle_outcome_async(
                partial(settler.finish_and_claim_next, claim, device.name),
                succeeded=outcome.succeeded,
                duration=outcome.duration,
                result=outcome.result,
                error=outcome.error,
            )
        finally:
            if stamps is not None:
                stamps.append(time.time())

    async def replace_dead_worker(self, device: LocalDevice) -> None:
        process = device.process
        process.join(timeout=1)
        claim, device.claim = device.claim, None
        if claim is not None:
            reason = f"worker process of device {device.name} exited with code {process.exitcode}"
            status = await self.db(release_job, claim.id, claim.fencing_token, reason)
            log.warning("job %s: %s; now %s", claim.public_id, reason, status)
        if not self.stopping:
            self.start_worker(device)

    async def keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if self.devices:
                await self.db(pool.touch_local_devices, [device.name for device in self.devices])
            claims = [device.claim for device in self.devices if device.claim is not None]
            if not claims:
                continue
            held = await self.db(renew_leases, claims)
            for device in self.devices:
                if (
                    device.claim is not None
                    and device.claim in claims
                    and device.claim.id not in held
                ):
                    # Cancelled by an operator, or taken over after a lost lease: stop the
                    # work; the worker is replaced and nothing of this run is recorded.
                    log.warning(
                        "job %s is no longer held by this dispatcher; stopping device %s",
                        device.claim.public_id,
                        device.name,
                    )
                    device.process.kill()

    async def reap_expired(self) -> None:
        while True:
            await asyncio.sleep(min(2.0, self.lease_seconds / 4))
            for public_id, status in await self.db(requeue_expired_leases):
                log.warning("job %s: lease expired; now %s", public_id, status)
                self.events.put_nowait(("wake", None))

    async def check_queue(self) -> None:
        """Check the queue's invariants and repair drift (`jobs.invariants`), so it is
        seen, logged and counted (`QueueRepair` rows) instead of stranding jobs."""
        while True:
            await asyncio.sleep(settings.ZYPHER_QUEUE_CHECK_SECONDS)
            repaired = await self.db(invariants.repair, f"dispatcher {self.name}")
            if repaired:
                log.warning("queue check repaired %d drift(s)", len(repaired))
                self.events.put_nowait(("wake", None))

    async def prune_ended_jobs(self) -> None:
        """Delete old ended jobs now and then (`jobs.retention.prune_due`), in a thread and
        connection of its own so that claims and settles never wait behind a batch. A
        database outage skips a round (the next interval tries again), never the dispatcher."""
        pruner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zypher-prune")
        loop = asyncio.get_running_loop()

        async def run(function: Callable[..., R], *args: Any) -> R:
            session = CallSession()
            return await watched(
                loop.run_in_executor(pruner, self._in_db_thread, function, args, session),
                lambda: describe_call(function, args),
                session,
            )

        try:
            while True:
                await asyncio.sleep(settings.ZYPHER_PRUNE_INTERVAL_SECONDS)
                older_than = retention.periodic_age()
                if older_than is None:
                    continue
                try:
                    deleted = await retention.prune_due(
                        run, older_than, settings.ZYPHER_PRUNE_BATCH_SIZE
                    )
                except DatabaseError as exc:
                    log.warning("prune stopped (%s); next round later", str(exc).strip()[:120])
                    continue
                if deleted:
                    log.info("pruned %d jobs that ended more than %s ago", deleted, older_than)
        finally:
            # The connection belongs to the thread; a batch in flight ends with its transaction.
            pruner.submit(connection.close)
            pruner.shutdown(wait=False)

    async def deliver_callbacks(self) -> None:
        """Post the results of finished programs to their callback URLs, with backoff."""
        while True:
            await asyncio.sleep(0.5)
            try:
                await self.callbacks.deliver_due(self.db)
            except DatabaseError:
                # One program's row or answer: its attempt is counted; try again later.
                log.exception("callback delivery failed")

    async def flush_progress(self) -> None:
        """Write the latest progress of each job every FLUSH_SECONDS at most: one
        transaction for all of them, however often the handlers reported."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            updates = self.progress.drain()
            if not updates:
                continue
            try:
                await self.db(save_progress, updates, retry=False)
            except DatabaseError as exc:  # progress is a hint: the next report replaces it
                log.warning("progress not written (%s)", str(exc).strip()[:120])
            except Exception:  # noqa: BLE001 - a bad report must not stop the dispatcher
                log.exception("progress not written")

    async def listen_for_work(self) -> None:
        """Wake on NOTIFY (PostgreSQL); reconnects by itself if the database restarts, and
        looks for work after each reconnect (what was notified meanwhile is lost)."""

        def wake() -> None:
            self.events.put_nowait(("wake", None))

        async for _ in notifications(NOTIFY_CHANNEL, on_connect=wake):
            wake()

    async def shut_down_devices(self) -> None:
        """Stop the workers (an idle one is asked, then killed after a second: it holds no
        job and no connection) and give back the jobs still running on them."""
        to_release = []
        for device in self.devices:
            claim, device.claim = device.claim, None
            process = device.process
            if process is None:
                continue
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(device.connection.fileno())
            if claim is not None:
                process.kill()
                to_release.append(claim)
            else:
                with contextlib.suppress(BrokenPipeError, OSError):
                    device.connection.send(None)
        deadline = time.monotonic() + 1.0
        processes = [device.process for device in self.devices if device.process is not None]
        while any(process.is_alive() for process in processes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for process in processes:
            if process.is_alive():
                process.kill()
        for claim in to_release:
            status = await self.db_before_exit(
                release_job,
                claim.id,
                claim.fencing_token,
                "dispatcher shut down before it finished",
            )
            if status is not None:
                log.info("job %s requeued at shutdown; now %s", claim.public_id, status)


def exit_now(status: int) -> None:
    """Leave the process at once, logs flushed: no thread (a database call that never
    returns, a handler in a simulated device) can hold the exit. Workers die with it."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_until_stopped(dispatcher: Dispatcher) -> None:
    """Run `dispatcher` and end the process with its exit status (`run_dispatcher`)."""
    loop = asyncio.new_event_loop()
    try:
        status = loop.run_until_complete(dispatcher.run())
    except BaseException:
        log.critical("dispatcher %s failed", dispatcher.name, exc_info=True)
        status = 1
    exit_now(status)
