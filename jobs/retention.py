"""Retention: delete ended jobs after a while, so the jobs table does not grow for ever.

`prune_ended_jobs` deletes succeeded, failed and cancelled jobs whose `finished_at` is
older than a cutoff, a small batch per transaction (ids found by the `job_finished_at`
index), so no lock is held long and the queue keeps serving. It never touches queued or
running jobs (the delete re-checks the status), nor a job whose own callback or whose
program's callback is still pending (the callback reports the job). What outlives the job rows: each
user's device seconds (`FairShareAccount.served_seconds`) and the queue's counters, which
count only queued and running jobs. A job's `JobRun` rows go with it.

Only ended jobs' rows are locked, which no other queue function locks (claims lock queued
jobs, settling running ones): pruning takes no pool or account lock and cannot deadlock
with a dispatcher. Several pruners (dispatchers) split the work: on PostgreSQL a batch
skips rows another pruner holds.

Periodic pruning (`ZYPHER_PRUNE_AFTER_SECONDS`, off by default): every dispatcher runs
`prune_due` every `ZYPHER_PRUNE_INTERVAL_SECONDS`, a batch of `ZYPHER_PRUNE_BATCH_SIZE`
per transaction, in a thread and database connection of its own: its claims and settles
never queue behind a batch. Its
age is at least the dashboard's window (`PERIODIC_FLOOR`, an hour): the dashboard's
figures read the jobs and runs of the last hour, and a run ends before its job does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.models import FINAL_STATUSES, Job, Program
from jobs.monitoring.stats import WINDOW

if TYPE_CHECKING:
    from django.db.models import QuerySet

log = logging.getLogger("zypher.retention")

DEFAULT_BATCH_SIZE = 1000
PERIODIC_FLOOR = WINDOW
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s` (a whole number and a unit) as a timedelta; ValueError else."""
    match = re.fullmatch(r"\s*([0-9]{1,9})\s*([dhms])\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not an age: a whole number and d, h, m or s (e.g. 30d).")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def prunable_jobs(cutoff: datetime) -> QuerySet[Job]:
    """Ended jobs finished before `cutoff`, but those still to be called back (their own
    callback or their program's)."""
    return (
        Job.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=cutoff)
        .exclude(program__callback_status=Program.Delivery.PENDING)
        .exclude(callback_status=Program.Delivery.PENDING)
    )


class PruneBatch(NamedTuple):
    deleted: int
    # Where the next batch starts: the batch's newest `finished_at`. Scanning the index from
    # there skips the entries of the rows already deleted, which stay in the index until
    # vacuum and would make each batch slower than the last.
    resume_at: datetime | None


def prune_batch(
    cutoff: datetime, batch_size: int = DEFAULT_BATCH_SIZE, resume_at: datetime | None = None
) -> PruneBatch:
    """Delete at most `batch_size` jobs that ended before `cutoff` (and not before
    `resume_at`), in one transaction; deleted 0: nothing left, or all found changed."""
    with transaction.atomic():
        candidates = prunable_jobs(cutoff)
        if resume_at is not None:
            candidates = candidates.filter(finished_at__gte=resume_at)
        rows = list(
            candidates.order_by("finished_at")
            # Another pruner's batch is skipped, not waited for (PostgreSQL; SQLite has
            # one writer anyway). `of`: the program's side of the join is not locked.
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("id", "finished_at")[:batch_size]
        )
        if not rows:
            return PruneBatch(0, resume_at)
        # The filter again: a job that left its final status since (none should) stays.
        # Only ids are read back: the collector needs no job's input or result.
        _, per_model = (
            prunable_jobs(cutoff).filter(id__in=[job_id for job_id, _ in rows]).only("id").delete()
        )
    return PruneBatch(per_model.get(Job._meta.label, 0), rows[-1][1])


def prune_ended_jobs(
    older_than: timedelta,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int, int], None] | None = None,
    now: datetime | None = None,
) -> int:
    """Delete the jobs that ended more than `older_than` ago, `batch_size` per transaction.

    Calls `on_batch(batch_number, jobs_deleted)` after each batch; returns the jobs deleted.
    """
    cutoff = (now or timezone.now()) - older_than
    total = 0
    batch = 0
    resume_at = None
    while True:
        deleted, resume_at = prune_batch(cutoff, batch_size, resume_at)
        if deleted == 0:  # nothing left, or every id found changed under us: stop, not spin
            break
        batch += 1
        total += deleted
        if on_batch is not None:
            on_batch(batch, deleted)
    return total


def periodic_age() -> timedelta | None:
    """How old an ended job must be for the dispatchers' periodic prune (None: off)."""
    seconds = settings.ZYPHER_PRUNE_AFTER_SECONDS
    if seconds <= 0:
        return None
    age = timedelta(seconds=seconds)
    if age < PERIODIC_FLOOR:
        log.warning(
            "ZYPHER_PRUNE_AFTER_SECONDS=%s is under the dashboard's window; pruning after %s",
            seconds,
            PERIODIC_FLOOR,
        )
        return PERIODIC_FLOOR
    return age


async def prune_due(
    run: Callable[..., Awaitable[Any]], older_than: timedelta, batch_size: int
) -> int:
    """One periodic prune: a batch per `run` call (a dispatcher runs them in a thread and
    connection of their own, so its claims never wait behind a batch); the jobs deleted."""
    cutoff = timezone.now() - older_than
    total = 0
    resume_at = None
    while True:
        deleted, resume_at = await run(prune_batch, cutoff, batch_size, resume_at)
        total += deleted
        if deleted < batch_size:
            return total
