"""Progress of running jobs: what a handler reports, and how it reaches the database.

A handler calls `report_progress(fraction, message)` (re-exported by `jobs.handlers`)
as often as it likes: the call only stores the latest value on the job's
`ProgressReporter` (an attribute assignment), so a tight loop pays nothing noticeable.
Whoever runs the handler reads that value when it suits it:

* a local worker process (`devices.dispatcher.worker`) sends it over its pipe at most
  every `SEND_SECONDS`, only when it changed;
* a remote agent (`devices.agent`) puts it in its answer to the gateway's `status`;
* a simulated device in the dispatcher is read directly.

The dispatcher keeps the latest value per job (`ProgressBuffer`) and writes them all at
most every `FLUSH_SECONDS` in one transaction (`save_progress`): no database write per
report. A write touches a job only while it is running on the device that reported,
under the claim's fencing token, so a late report for a requeued job writes nothing.

This module is imported by worker processes and agents before Django is set up: the
ORM is imported inside `save_progress` only.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

PROGRESS_MESSAGE_LENGTH = 200  # a status line, not a log: longer messages are cut
SEND_SECONDS = 0.25  # a worker sends a changed value at most this often
FLUSH_SECONDS = 0.5  # the dispatcher writes the latest values at most this often
PROGRESS_CHANNEL = "zypher_progress"  # NOTIFY payload: the job's public id
MAX_FENCING_TOKEN = 2**31 - 1  # `Job.attempts` is an integer column


@dataclass(frozen=True)
class Progress:
    fraction: float
    message: str


def normalised(fraction: Any, message: Any) -> Progress | None:
    """A handler's report made safe to store: the fraction clamped to 0..1, the message a
    short string without NUL (PostgreSQL refuses it) and encodable as UTF-8 (a lone
    surrogate fails the whole flush); None for a fraction that is no number. Never raises:
    whatever the handler passed, its `__float__` or `__str__` included."""
    try:
        value = float(fraction)
    except Exception:  # noqa: BLE001 - anything a handler passed: not a number we store
        return None
    if math.isnan(value):
        return None
    return Progress(min(max(value, 0.0), 1.0), _message_text(message))


def _message_text(message: Any) -> str:
    try:
        text = str.__str__(message) if isinstance(message, str) else str(message)
    except Exception:  # noqa: BLE001 - a message that cannot say itself says nothing
        return ""
    text = text[:PROGRESS_MESSAGE_LENGTH].replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")


class ProgressReporter:
    """The latest report of one run of a handler."""

    __slots__ = ("latest", "_taken")

    def __init__(self) -> None:
        self.latest: tuple[Any, Any] | None = None
        self._taken: tuple[Any, Any] | None = None

    def take(self) -> Progress | None:
        """The latest report if it changed since the last take (normalised), else None."""
        latest = self.latest
        if latest is None or latest is self._taken:
            return None
        self._taken = latest
        return normalised(*latest)

    def peek(self) -> Progress | None:
        return None if self.latest is None else normalised(*self.latest)


_current: ContextVar[ProgressReporter | None] = ContextVar("zypher_progress", default=None)


def report_progress(fraction: float, message: str = "") -> None:
    """Say how far the running job has got (0 to 1) and, optionally, a short message.

    Cheap enough for a tight loop: only the latest value is kept, and it is sent on at
    most every few hundred milliseconds. Outside a job (a test calling the handler) it
    does nothing."""
    reporter = _current.get()
    if reporter is not None:
        reporter.latest = (fraction, message)


@contextlib.contextmanager
def reporting(reporter: ProgressReporter) -> Iterator[ProgressReporter]:
    """Run a handler with `reporter` receiving its `report_progress` calls (also in threads
    started with `asyncio.to_thread`, which copy the context)."""
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)


# The job a report is about: (public id, fencing token, device name).
ProgressKey = tuple[str, int, str]


class ProgressBuffer:
    """The dispatcher's latest report per job, until the next flush."""

    def __init__(self) -> None:
        self.latest: dict[ProgressKey, Progress] = {}
        self.watched: dict[ProgressKey, ProgressReporter] = {}

    def record(self, key: ProgressKey, progress: Progress | None) -> None:
        if progress is not None:
            self.latest[key] = progress

    def watch(self, key: ProgressKey, reporter: ProgressReporter) -> None:
        """A handler running in this process: read its reporter at each flush."""
        self.watched[key] = reporter

    def unwatch(self, key: ProgressKey) -> None:
        self.watched.pop(key, None)
        self.latest.pop(key, None)

    def drain(self) -> dict[ProgressKey, Progress]:
        for key, reporter in list(self.watched.items()):
            self.record(key, reporter.take())
        latest, self.latest = self.latest, {}
        return latest


def save_progress(updates: dict[ProgressKey, Progress]) -> int:
    """Write the latest progress of jobs still running on the device that reported them
    under the same fencing token; returns how many rows were written. Rows are locked in
    id order (the queue's lock order) and each updated job is NOTIFYed on PostgreSQL."""
    from django.db import connection, transaction
    from django.db.models import Q

    from jobs.models import Job, JobStatus

    # Keys from agents' answers are checked here, the one place that turns them into SQL:
    # a malformed id or token is no job of ours, and must not fail the other jobs' writes.
    checked: dict[ProgressKey, Progress] = {}
    for (public_id, fencing_token, device), progress in updates.items():
        try:
            canonical = str(uuid.UUID(public_id))
        except (TypeError, ValueError, AttributeError):
            continue
        if isinstance(fencing_token, int) and 0 < fencing_token <= MAX_FENCING_TOKEN:
            checked[(canonical, fencing_token, device)] = progress
    if not checked:
        return 0
    updates = checked
    held = Q()
    for public_id, fencing_token, device in updates:
        held |= Q(public_id=public_id, attempts=fencing_token, device=device)
    written = 0
    with transaction.atomic():
        rows = list(
            Job.objects.select_for_update(no_key=True)
            .filter(held, status=JobStatus.RUNNING)
            .order_by("id")
            .values_list("id", "public_id", "attempts", "device")
        )
        for job_id, public_id, attempts, device in rows:
            progress = updates[(str(public_id), attempts, device)]
            written += Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
                progress=progress.fraction, progress_message=progress.message
            )
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_notify(%s, %s)", [PROGRESS_CHANNEL, str(public_id)])
    return written
