"""A local device: a worker process that runs one job at a time.

The dispatcher sends `JobOrder`s over a pipe and gets `JobOutcome`s back. The worker
never touches the database: if it dies mid-job, the dispatcher sees its pipe close and
gives the job back to the queue; nothing it half-did is recorded.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

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


def run_order(order: JobOrder) -> JobOutcome:
    """Run one job through its handler and time it: the local workers' and the simulated
    devices' way to run a job (the outcome is then written by `jobs.results.settle_outcome`)."""
    from jobs.handlers import resolve_handler
    from jobs.results import storable_result

    started = time.monotonic()
    try:
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
    while True:
        try:
            order = connection.recv()
        except (EOFError, OSError):
            return
        if order is None:
            return
        connection.send(run_order(order))
