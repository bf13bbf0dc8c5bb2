"""A local device: a worker process that runs one job at a time.

The dispatcher sends `JobOrder`s over a pipe and gets `JobOutcome`s back, and, while a
job runs, a `JobProgress` whenever its handler reported a new value (at most every
`jobs.progress.SEND_SECONDS`, sent by a small thread so the handler never waits). The
worker never touches the database: if it dies mid-job, the dispatcher sees its pipe close and
gives the job back to the queue; nothing it half-did is recorded.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from jobs.progress import SEND_SECONDS, ProgressReporter, reporting

if TYPE_CHECKING:  # the worker process imports this module before Django is set up
    from jobs.queue import ClaimedJob


@dataclass(frozen=True)
class JobOrder:
    job_id: int
    fencing_token: int
    kind: str
    input: Any


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    fencing_token: int
    succeeded: bool
    result: Any
    error: str
    duration: float


@dataclass(frozen=True)
class JobProgress:
    job_id: int
    fencing_token: int
    fraction: float
    message: str


def log_job_start(log: logging.Logger, claim: ClaimedJob, device_name: str) -> None:
    """The one line per job start that every device kind writes (`make run`'s log)."""
    log.info(
        "start job %s user=%s kind=%s device=%s attempt=%d",
        claim.public_id,
        claim.owner,
        claim.kind,
        device_name,
        claim.fencing_token,
    )


def run_order(order: JobOrder, reporter: ProgressReporter | None = None) -> JobOutcome:
    """Run one job through its handler and time it: the local workers' and the simulated
    devices' way to run a job (the outcome is then written by `jobs.results.settle_outcome`).
    The handler's progress reports go to `reporter`."""
    from jobs.handlers import resolve_handler
    from jobs.results import storable_result

    started = time.monotonic()
    try:
        with reporting(reporter or ProgressReporter()):
            result = resolve_handler(order.kind)(order.input)
        # Checked here too, so that a huge or unpicklable result never crosses the pipe.
        problem = storable_result(result)
        succeeded, error = problem is None, problem or ""
        if problem is not None:
            result = None
    except Exception as exc:  # a handler's failure is the job's failure, not the worker's
        result, succeeded = None, False
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    return JobOutcome(
        order.job_id, order.fencing_token, succeeded, result, error, time.monotonic() - started
    )


def die_with_parent() -> None:
    """Ask Linux to kill this process when the dispatcher dies (even by kill -9), so no
    orphaned worker finishes a job whose lease is about to be handed to someone else."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the worker exits at its next read of the closed pipe


class ProgressSender:
    """Sends the running job's latest progress over the pipe every SEND_SECONDS when it
    changed, from a thread of its own; the lock keeps its messages whole and stops it
    sending for a job whose outcome was sent."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.lock = threading.Lock()
        self.running: tuple[JobOrder, ProgressReporter] | None = None
        threading.Thread(target=self._send_forever, name="progress", daemon=True).start()

    def _send_forever(self) -> None:
        while True:
            time.sleep(SEND_SECONDS)
            with self.lock:
                if self.running is None:
                    continue
                order, reporter = self.running
                progress = reporter.take()
                if progress is None:
                    continue
                try:
                    self.connection.send(
                        JobProgress(
                            order.job_id, order.fencing_token, progress.fraction, progress.message
                        )
                    )
                except (OSError, ValueError):
                    return  # the dispatcher is gone: the main thread sees it too


def worker_main(connection: Connection, parent_pid: int) -> None:
    """Entry point of a worker process (started with the 'spawn' method)."""
    die_with_parent()
    if os.getppid() != parent_pid:
        return  # the dispatcher died before we could ask to die with it
    # Ctrl-C reaches the whole process group: the dispatcher decides what happens
    # to running jobs, so the workers ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "zypher.settings")
    import django

    django.setup()
    sender = ProgressSender(connection)
    while True:
        try:
            order = connection.recv()
        except (EOFError, OSError):
            return
        if order is None:
            return
        reporter = ProgressReporter()
        sender.running = (order, reporter)
        outcome = run_order(order, reporter)
        with sender.lock:
            sender.running = None
            connection.send(outcome)
