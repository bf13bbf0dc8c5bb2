"""The queue's invariants, written once: what `check_queue`, the dispatcher and the tests
all check, and the repair of what can drift.

1. Per (user, pool) account, `queued_count` equals its queued jobs and `running_count`
   its running jobs; every queued or running job has an account.
2. Every running job holds a live lease, or is requeued within one reap interval
   (`REAP_INTERVAL_SECONDS`; a lease older than that plus `LEASE_GRACE_SECONDS` is a
   violation: nobody is reaping).
3. A job's fields agree with its status: a queued job has no lease and no end; a running
   job has a start and a lease and no end. (That an end is recorded once is the fencing
   compare-and-set in `jobs.queue`; a second end is refused there, not repaired here.)
4. A pool's virtual time never goes back (`PoolClock`, which remembers what it saw).

Counters are confirmed and repaired under the account's row lock. Every change of an
account's jobs takes that lock before it touches a job (the lock order in `jobs.queue`),
so a count taken while holding it cannot be overtaken by a transaction in flight, and
writing it back is exact. Each repair is recorded as a `QueueRepair` row.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from jobs.models import FairPool, FairShareAccount, Job, JobStatus, QueueRepair
from jobs.queue import pool_id_for, release_job

log = logging.getLogger("zypher.invariants")

REAP_INTERVAL_SECONDS = 2.0  # the dispatcher reaps at most this long apart
LEASE_GRACE_SECONDS = 5.0  # slack for a busy machine before an old lease is a violation


@dataclass(frozen=True)
class Violation:
    kind: str  # queued_count, running_count, missing_account, lease, job_fields, pool_time
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


@dataclass
class PoolClock:
    """Remembers each pool's virtual time between checks, to see it go back."""

    seen: dict[str, float] = field(default_factory=dict)

    def violations(self) -> list[Violation]:
        found = []
        for device_type, virtual_time in FairPool.objects.values_list(
            "device_type", "virtual_time"
        ):
            before = self.seen.get(device_type)
            if before is not None and virtual_time < before:
                found.append(
                    Violation(
                        "pool_time",
                        f"pool {device_type}",
                        f"virtual time went back from {before} to {virtual_time}",
                    )
                )
            self.seen[device_type] = virtual_time
        return found


@dataclass(frozen=True)
class _Counts:
    queued: int
    running: int


def _job_counts() -> dict[tuple[int, str], _Counts]:
    """Queued and running jobs per (owner, pool), in one grouped query."""
    tally: dict[tuple[int, str], Counter[str]] = {}
    rows = (
        Job.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
        .values_list("owner_id", "device_type", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for owner_id, device_type, status, n in rows:
        tally.setdefault((owner_id, device_type), Counter())[status] += n
    return {
        key: _Counts(counts[JobStatus.QUEUED], counts[JobStatus.RUNNING])
        for key, counts in tally.items()
    }


def _suspect_accounts() -> list[tuple[int, str]]:
    """(user id, pool) pairs whose counters disagree with the jobs, read without locks: a
    suspect is confirmed under the account's lock before it is reported or repaired."""
    actual = _job_counts()
    suspects = []
    accounts = FairShareAccount.objects.values_list(
        "user_id", "pool__device_type", "queued_count", "running_count"
    )
    for user_id, device_type, queued, running in accounts:
        counts = actual.pop((user_id, device_type), _Counts(0, 0))
        if (queued, running) != (counts.queued, counts.running):
            suspects.append((user_id, device_type))
    suspects.extend(actual)  # jobs whose account row is missing
    return sorted(suspects)


def _confirm_account(user_id: int, device_type: str, *, repair: bool, by: str) -> list[Violation]:
    """Recount one account under its row lock; fix it and record the repair if asked."""
    with transaction.atomic():
        pool_id = pool_id_for(device_type)
        # Only the account's row: joined in, the user's row would be locked too, after
        # the account, while remove-from-queue updates the user and then locks accounts.
        account = (
            FairShareAccount.objects.select_for_update(no_key=True, of=("self",))
            .select_related("user")
            .filter(pool_id=pool_id, user_id=user_id)
            .first()
        )
        found: list[Violation] = []
        if account is None:
            subject = f"user {user_id} in {device_type}"
            found.append(Violation("missing_account", subject, "jobs without an account row"))
            if not repair:
                return found
            account, _ = FairShareAccount.objects.get_or_create(pool_id=pool_id, user_id=user_id)
            account = (
                FairShareAccount.objects.select_for_update(no_key=True, of=("self",))
                .select_related("user")
                .get(pk=account.pk)
            )
        jobs = Job.objects.filter(owner_id=user_id, device_type=device_type)
        counted = jobs.aggregate(
            queued=Count("id", filter=Q(status=JobStatus.QUEUED)),
            running=Count("id", filter=Q(status=JobStatus.RUNNING)),
        )
        subject = f"account {account.user.username} in {device_type}"
        for kind in ("queued", "running"):
            recorded = getattr(account, f"{kind}_count")
            if recorded != counted[kind]:
                found.append(
                    Violation(
                        f"{kind}_count", subject, f"{recorded} recorded, {counted[kind]} counted"
                    )
                )
        if repair and found:
            FairShareAccount.objects.filter(pk=account.pk).update(
                queued_count=counted["queued"], running_count=counted["running"]
            )
            QueueRepair.objects.bulk_create(
                QueueRepair(kind=v.kind, subject=v.subject, detail=v.detail, repaired_by=by)
                for v in found
            )
    return found


def _overdue_running() -> list[tuple[int, int, str, datetime | None]]:
    """Running jobs without a lease or with one that expired longer ago than a reaper takes."""
    overdue = timezone.now() - timedelta(seconds=REAP_INTERVAL_SECONDS + LEASE_GRACE_SECONDS)
    return list(
        Job.objects.filter(
            Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=overdue),
            status=JobStatus.RUNNING,
        ).values_list("id", "attempts", "public_id", "lease_expires_at")
    )


def _lease_violation(public_id: str, expires: datetime | None) -> Violation:
    if expires is None:
        return Violation("lease", f"job {public_id}", "running without a lease")
    detail = f"lease expired at {expires.isoformat()} and nobody requeued it"
    return Violation("lease", f"job {public_id}", detail)


def _job_field_violations() -> list[Violation]:
    wrong = Job.objects.filter(
        Q(status=JobStatus.QUEUED, lease_expires_at__isnull=False)
        | Q(status=JobStatus.QUEUED, finished_at__isnull=False)
        | Q(status=JobStatus.RUNNING, started_at__isnull=True)
        | Q(status=JobStatus.RUNNING, finished_at__isnull=False)
    ).values_list("public_id", "status")
    return [
        Violation("job_fields", f"job {public_id}", f"fields disagree with status {status}")
        for public_id, status in wrong
    ]


def find_violations(clock: PoolClock | None = None) -> list[Violation]:
    """Every invariant that does not hold now (counters confirmed under their locks)."""
    found: list[Violation] = []
    for user_id, device_type in _suspect_accounts():
        found += _confirm_account(user_id, device_type, repair=False, by="")
    found += [_lease_violation(str(p), expires) for _, _, p, expires in _overdue_running()]
    found += _job_field_violations()
    if clock is not None:
        found += clock.violations()
    return found


def repair(repaired_by: str) -> list[Violation]:
    """Fix what can drift: counters (under their locks) and leases nobody reaped.
    Returns what was found and repaired; each repair is logged and recorded."""
    repaired: list[Violation] = []
    for user_id, device_type in _suspect_accounts():
        repaired += _confirm_account(user_id, device_type, repair=True, by=repaired_by)
    for job_id, attempts, public_id, expires in _overdue_running():
        # Rechecked under the lock: a lease renewed since it was read stays.
        cutoff = None if expires is None else expires + timedelta(microseconds=1)
        reason = "no live lease: released by the queue check"
        status = release_job(job_id, attempts, reason, expired_before=cutoff)
        if status is None:
            continue  # settled or renewed meanwhile
        found = _lease_violation(str(public_id), expires)
        found = Violation(found.kind, found.subject, f"{found.detail}; now {status}")
        QueueRepair.objects.create(
            kind=found.kind, subject=found.subject, detail=found.detail, repaired_by=repaired_by
        )
        repaired.append(found)
    for violation in repaired:
        log.warning("repaired %s", violation)
    return repaired
