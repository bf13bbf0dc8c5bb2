"""Submit, claim, settle, requeue and cancel: the queue's state changes, on the database.

This is the ORM translation of `jobs.fairshare` (read that first). Every change of a
job's status goes through a function here, so the counters in `FairShareAccount` stay
in step with the jobs table, each in one short transaction.

Claiming is a compare-and-set: the pool row is locked (claims of one pool are
serialised, which keeps the fair order exact across dispatchers), the job row is taken
with `FOR UPDATE SKIP LOCKED`, and its `attempts` becomes the fencing token: a result or
a heartbeat carrying an older token is refused.

One lock order for every function here and its PL/pgSQL twin (`jobs/sql/`): a user's
row where one is taken (a submit, a deactivation, `delete_users`), then a device row
(devices.pool), then the pool row, then accounts, then jobs. Nothing that holds a
device, pool, account or job lock waits for a user's row. Several accounts of one
pool are locked only under that pool's lock (a claim), one user's accounts in several
pools in pool-id order (remove from queue). A counter changes by the rows a statement
really changed, never by assigning a value read earlier; the one exception, repairing
a drifted counter, counts under the account's lock (`jobs.invariants`).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Func, Q, Subquery, Sum
from django.utils import timezone

from jobs import postgres
from jobs.models import (
    FairPool,
    FairShareAccount,
    Job,
    JobRun,
    JobStatus,
    Program,
    QueueRepair,
    User,
)

log = logging.getLogger("zypher.queue")

NOTIFY_CHANNEL = "zypher_work"  # payload: the device type that has new work
DONE_CHANNEL = "zypher_done"  # payload: the public id of a job that reached a final status
COST_SMOOTHING = 0.2  # weight of the newest duration in the pool's running mean

_pool_ids: dict[str, int] = {}


@dataclass(frozen=True)
class JobSpec:
    """What a user asks for; validated by the API before it gets here."""

    kind: str
    input: Any
    device_type: str = "cpu"
    priority: int = 0
    size: int = 0


@dataclass(frozen=True)
class ClaimedJob:
    """A job handed to a device, with what the dispatcher needs to settle it."""

    id: int
    public_id: str
    owner_id: int
    owner: str
    kind: str
    input: Any
    device_type: str
    pool_id: int
    fencing_token: int
    charged_cost: float
    charged_weight: float


def pool_id_for(device_type: str) -> int:
    """The id of the pool row for `device_type`, created on first use (rows are never deleted)."""
    pool_id = _pool_ids.get(device_type)
    if pool_id is None:
        pool, _ = FairPool.objects.get_or_create(
            device_type=device_type,
            defaults={"cost_estimate": settings.ZYPHER_DEFAULT_COST_SECONDS},
        )
        pool_id = _pool_ids[device_type] = pool.pk
    return pool_id


# Add queued work to an account. A user that had nothing queued is lifted to the pool's
# virtual time (idle time banks no credit), and so is one whose queued jobs are all bigger
# than the smallest new one: it had no work for the devices that one fits, and waiting for
# a bigger device banks no credit to spend on them (issue 13; one probe of job_queued_fit).
# Plain SQL that PostgreSQL and SQLite share.
_ENQUEUE_SQL = """
INSERT INTO jobs_fairshareaccount
    (pool_id, user_id, virtual_time, queued_count, running_count, served_seconds)
VALUES (%s, %s, (SELECT virtual_time FROM jobs_fairpool WHERE id = %s), %s, 0, 0)
ON CONFLICT (pool_id, user_id) DO UPDATE SET
    virtual_time = CASE
        WHEN (jobs_fairshareaccount.queued_count = 0 OR NOT EXISTS (
                SELECT 1 FROM jobs_job j
                WHERE j.device_type = %s AND j.owner_id = jobs_fairshareaccount.user_id
                  AND j.status = 'queued' AND j.size <= %s))
         AND jobs_fairshareaccount.virtual_time < excluded.virtual_time
        THEN excluded.virtual_time ELSE jobs_fairshareaccount.virtual_time END,
    queued_count = jobs_fairshareaccount.queued_count + excluded.queued_count
"""


class QueueLimitReached(Exception):
    """A submit that would take its user past `ZYPHER_MAX_QUEUED_PER_USER` queued jobs.
    Nothing of it was queued; the API answers 429 with `Retry-After`."""

    def __init__(self, username: str, queued: int, requested: int, limit: int) -> None:
        super().__init__(
            f"User {username!r} has {queued} jobs queued; {requested} more would pass the "
            f"limit of {limit} queued jobs per user (ZYPHER_MAX_QUEUED_PER_USER). Nothing "
            "was queued; retry when some of them have run."
        )
        self.username = username
        self.queued = queued
        self.requested = requested
        self.limit = limit


class OwnerDeactivated(Exception):
    """A submit for a deactivated user; nothing was queued (the API answers 403)."""

    def __init__(self, username: str) -> None:
        super().__init__(f"User {username!r} is deactivated and cannot submit jobs.")
        self.username = username


class OwnerDeleted(Exception):
    """A submit for a user (a row read earlier, as a token's user) that was deleted before
    the submit reached it; nothing was queued. The API answers 401 for a token's own user:
    its credentials name no one now. A user named by a request (`NamedUser`) is never
    gone: the submit creates it again."""

    def __init__(self, username: str, user_id: int) -> None:
        super().__init__(f"User {username!r} no longer exists; nothing was queued.")
        self.username = username
        self.user_id = user_id


class IdempotencyKeyMismatch(Exception):
    """A keyed submit whose key found jobs, but not one for each job sent: the key was used
    for another request (a batch of another size, or a single job keyed as a batch keys
    its jobs, `k#1`). Answering with the jobs found would hand back someone else's request
    as this one's; nothing was queued (the API answers 422)."""

    def __init__(self, key: str, found: int, sent: int) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was used before for another request ({found} of the "
            f"{sent} jobs sent match its jobs); nothing was queued. Send a new key."
        )
        self.key = key


@dataclass(frozen=True)
class NamedUser:
    """A user named by a request (open mode, or a token acting for its end users): found
    or created by the submit itself, in the same call that queues its jobs."""

    username: str


def check_admission(owner: User, requested: int) -> None:
    """Refuse (QueueLimitReached) a submit of `requested` jobs that would leave `owner` with
    more than `ZYPHER_MAX_QUEUED_PER_USER` queued, whole.

    The user's queued jobs are the sum of their accounts' counters: one indexed read of
    jobs_fairshareaccount (by user_id), never a count over jobs. Exact when it runs where
    `submit_jobs` runs it: on SQLite inside the submit's IMMEDIATE transaction (writers
    take turns), on PostgreSQL inside zypher_submit under the user's row lock.
    """
    limit = settings.ZYPHER_MAX_QUEUED_PER_USER
    queued = (
        FairShareAccount.objects.filter(user=owner).aggregate(total=Sum("queued_count"))["total"]
        or 0
    )
    if queued + requested > limit:
        raise QueueLimitReached(owner.username, queued, requested, limit)


def _enqueue(pool_id: int, user_id: int, device_type: str, sizes: list[int]) -> None:
    """The ORM path's enqueue (SQLite, which polls instead of NOTIFY). On PostgreSQL
    zypher_submit does the same and NOTIFYs only when a user becomes backlogged: one
    NOTIFY per job would serialise commits under a burst (a database-wide lock)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _ENQUEUE_SQL, [pool_id, user_id, pool_id, len(sizes), device_type, min(sizes)]
        )


def submit_jobs(
    owner: User | NamedUser,
    specs: list[JobSpec],
    *,
    idempotency_key: str | None = None,
    program: Program | None = None,
) -> tuple[list[Job], bool]:
    """Queue `specs` for `owner` in one transaction, all or nothing.

    `owner` is a user, or a `NamedUser` found or created in the same transaction.
    Returns the jobs and whether they were created now (False: the idempotency key
    was used before and these are the jobs it created then). Raises OwnerDeleted for a
    `User` whose row is gone, OwnerDeactivated for a deactivated user, and
    QueueLimitReached when the jobs would take `owner` past `ZYPHER_MAX_QUEUED_PER_USER`
    queued (a retry of a keyed submit that was accepted still answers with its jobs, at
    the cap or after a deactivation). On PostgreSQL all of it is one call of zypher_submit
    (jobs/sql/submit.sql): one round trip.
    """
    keys: list[str | None]
    if idempotency_key is None:
        keys = [None] * len(specs)
    elif len(specs) == 1:
        keys = [idempotency_key]
    else:
        keys = [f"{idempotency_key}#{index}" for index in range(len(specs))]
    if connection.vendor == "postgresql":
        return _submit_on_postgres(owner, specs, keys, idempotency_key, program)
    try:
        with transaction.atomic():
            user, active = _owner_row(owner)
            if idempotency_key is not None and (
                repeated := _answer_for_key(user, idempotency_key, keys)
            ):
                return repeated, False
            if not active:
                raise OwnerDeactivated(user.username)
            check_admission(user, len(specs))
            jobs = _new_jobs(user, specs, keys, program)
            per_pool: dict[str, list[Job]] = {}
            for job in jobs:
                per_pool.setdefault(job.device_type, []).append(job)
            # Accounts in pool-id order, each before its jobs (the lock order).
            for device_type, pool_jobs in sorted(
                per_pool.items(), key=lambda item: pool_id_for(item[0])
            ):
                _enqueue(
                    pool_id_for(device_type),
                    user.pk,
                    device_type,
                    [job.size for job in pool_jobs],
                )
                Job.objects.bulk_create(pool_jobs)
    except IntegrityError:
        # A concurrent retry with the same key won the race: answer with its jobs.
        if idempotency_key is not None and (
            repeated := _answer_for_key(_owner_row(owner)[0], idempotency_key, keys)
        ):
            return repeated, False
        raise
    return jobs, True


def _owner_row(owner: User | NamedUser) -> tuple[User, bool]:
    """The ORM path's user, and whether it is active as the database holds it now (the caller
    refuses a deactivated one after a repeated key is answered): a `NamedUser` is found or
    created. A `User` is read again inside the submit's transaction, as zypher_submit reads
    its row: the copy may predate a deactivation or a delete (OwnerDeleted: jobs owned by no
    one cannot be queued)."""
    if isinstance(owner, User):
        active = User.objects.filter(pk=owner.pk).values_list("is_active", flat=True).first()
        if active is None:
            raise OwnerDeleted(owner.username, owner.pk)
        return owner, active
    user, _ = User.objects.get_or_create(username=owner.username)
    return user, user.is_active


def _new_jobs(
    owner: User | None, specs: list[JobSpec], keys: list[str | None], program: Program | None
) -> list[Job]:
    now = timezone.now()
    return [
        Job(
            public_id=uuid.uuid4(),
            owner=owner,
            kind=spec.kind,
            input=spec.input,
            device_type=spec.device_type,
            priority=spec.priority,
            size=spec.size,
            program=program,
            idempotency_key=key,
            created_at=now,
        )
        for spec, key in zip(specs, keys, strict=True)
    ]


def _submit_on_postgres(
    owner: User | NamedUser,
    specs: list[JobSpec],
    keys: list[str | None],
    idempotency_key: str | None,
    program: Program | None,
) -> tuple[list[Job], bool]:
    """`submit_jobs` as one call of zypher_submit: user, key, cap and every pool's jobs."""
    # A named user's jobs get their owner from the answer.
    jobs = _new_jobs(owner if isinstance(owner, User) else None, specs, keys, program)
    sql, params = submit_statement(
        owner, specs, keys, [job.public_id for job in jobs], jobs[0].created_at, program
    )
    return submit_answer(postgres.rows(sql, params), owner, jobs, keys, idempotency_key)


def submit_statement(
    owner: User | NamedUser,
    specs: list[JobSpec],
    keys: list[str | None],
    public_ids: list[uuid.UUID],
    now: datetime,
    program: Program | None = None,
) -> tuple[str, dict[str, Any]]:
    """The zypher_submit call that queues `specs` with these ids at `now`: its SQL and
    parameters. Split from `submit_jobs` so that a caller on the event loop
    (jobs.api.direct_submit) runs the same call on a connection of its own."""
    one = len(specs) == 1  # the common single job: its arrays' one elements, cheaper to adapt
    columns: dict[str, list[Any]] = {
        "device_types": [spec.device_type for spec in specs],
        "public_ids": public_ids,
        "kinds": [spec.kind for spec in specs],
        "inputs": [None if spec.input is None else json.dumps(spec.input) for spec in specs],
        "priorities": [spec.priority for spec in specs],
        "sizes": [spec.size for spec in specs],
        "keys": keys,
    }
    params = {
        "owner_id": owner.pk if isinstance(owner, User) else None,
        "username": None if isinstance(owner, User) else owner.username,
        **{name: values[0] if one else values for name, values in columns.items()},
        "program_id": program.pk if program else None,
        "now": now,
        "default_cost": settings.ZYPHER_DEFAULT_COST_SECONDS,
        "default_weight": _DEFAULT_WEIGHT,
        "max_queued": settings.ZYPHER_MAX_QUEUED_PER_USER,
    }
    return postgres.statement("zypher_submit", params, _SUBMIT_CASTS, one=one), params


def raise_submit_refusal(rows: list[tuple[Any, ...]], owner: User | NamedUser, count: int) -> None:
    """Raise what zypher_submit's answer refuses (nothing was queued then): OwnerDeleted,
    OwnerDeactivated or QueueLimitReached."""
    outcome, queued = rows[0][0], rows[0][2]
    if outcome == "gone":
        assert isinstance(owner, User)  # a name is created again, never gone
        raise OwnerDeleted(owner.username, owner.pk)
    if outcome == "inactive":
        raise OwnerDeactivated(owner.username)
    if outcome == "full":
        raise QueueLimitReached(owner.username, queued, count, settings.ZYPHER_MAX_QUEUED_PER_USER)


def submit_answer(
    rows: list[tuple[Any, ...]],
    owner: User | NamedUser,
    jobs: list[Job],
    keys: list[str | None],
    idempotency_key: str | None,
) -> tuple[list[Job], bool]:
    """`submit_jobs`'s answer from zypher_submit's rows, read into the unsaved `jobs`."""
    raise_submit_refusal(rows, owner, len(jobs))
    by_id = isinstance(owner, User)
    outcome, owner_id = rows[0][0], rows[0][1]
    # A named user's row as far as this call read it; any other field loads when read
    # (deferred), so nothing stands in for a value the row does not hold.
    user = (
        owner
        if by_id
        else User.from_db(connection.alias, ["id", "username"], [owner_id, owner.username])
    )
    assert isinstance(user, User)
    if outcome == "repeated":
        assert idempotency_key is not None
        return _repeated(user, idempotency_key, keys), False
    ids = {public_id: job_id for _, _, _, public_id, job_id in rows}
    for job in jobs:
        if not by_id:
            job.owner = user
        job.id = ids[job.public_id]
        job._state.adding = False
    return jobs, True


_DEFAULT_WEIGHT = User._meta.get_field("weight").get_default()

_SUBMIT_CASTS = {
    "device_types": "text[]",
    "public_ids": "uuid[]",
    "kinds": "text[]",
    "inputs": "jsonb[]",
    "priorities": "integer[]",
    "sizes": "integer[]",
    "keys": "text[]",
}


def other_request_keys(key: str, count: int) -> list[str]:
    """Keys a request of another size under `key` stored and one of `count` jobs does not:
    a single job stores `key` itself, a batch `key#0`, `key#1`, ... So a single job looks
    for a batch's `key#0` and `key#1` (both: every batch has both, and a single job keyed
    `key#0` is a request of its own), a batch for a single job's `key` and for
    `key#<count>`, the next job of a longer batch (a shorter one is missing some of this
    request's own keys). zypher_submit (jobs/sql/submit.sql) looks for the same keys."""
    return [f"{key}#0", f"{key}#1"] if count == 1 else [key, f"{key}#{count}"]


def _answer_for_key(owner: User, key: str, keys: list[str | None]) -> list[Job] | None:
    """What a used `key` answers, read in one query: None when neither this request nor one
    of another size used it; else the jobs, one for each job sent, or IdempotencyKeyMismatch
    when the key was another request's (answering with those jobs would hand back another
    request as this one). A single job's own key found is its request (a batch under `key`
    was refused while it existed; a single job keyed `key#0` is another key); a batch's
    `key#0` and `key#1` without it are a batch's."""
    other = other_request_keys(key, len(keys))
    found = {
        job.idempotency_key: job
        for job in Job.objects.filter(
            owner=owner, idempotency_key__in=[*keys, *other]
        ).select_related("owner", "program")
    }
    if len(keys) == 1 and keys[0] not in found:
        if all(probed in found for probed in other):
            raise IdempotencyKeyMismatch(key, 0, 1)
        return None
    if not found:
        return None
    jobs = [found[sent] for sent in keys if sent in found]
    if len(jobs) != len(keys) or (len(keys) > 1 and len(found) != len(jobs)):
        raise IdempotencyKeyMismatch(key, len(jobs), len(keys))
    return jobs


def _repeated(owner: User, key: str, keys: list[str | None]) -> list[Job]:
    """The jobs a key zypher_submit found used answers with (`_answer_for_key`); none found
    now (the user deleted since) is a mismatch, as for any key whose jobs are not all
    there."""
    jobs = _answer_for_key(owner, key, keys)
    if jobs is None:
        raise IdempotencyKeyMismatch(key, 0, len(keys))
    return jobs


def claim_next(
    device_type: str, device_name: str, device_size: int | None = None
) -> ClaimedJob | None:
    """Take the next job of `device_type` by the fair-share policy, or None if none waits.

    With `device_size`, only jobs whose `size` fits the device are considered: the
    backlogged users are tried in fair order, without a cap, and the first with a fitting
    job is served. A user passed over costs one probe of the index `job_queued_fit` (its
    smallest queued size), however many jobs it has; it is not charged, so it keeps its
    place for a device that fits.
    """
    if connection.vendor == "postgresql":
        return _claim_on_postgres(device_type, device_name, device_size)
    with transaction.atomic(savepoint=False):
        pool = (
            FairPool.objects.select_for_update(no_key=True).filter(device_type=device_type).first()
        )
        if pool is None:
            return None
        for candidate in _backlogged_accounts(pool):
            if device_size is not None and not _fits(device_type, candidate.user_id, device_size):
                continue  # read without its lock: only the user that is served is locked
            # The account before its jobs: cancels and requeues hold them in that order.
            account = (
                FairShareAccount.objects.select_for_update(no_key=True)
                .select_related("user")
                .get(pk=candidate.pk)
            )
            if account.queued_count <= 0:
                continue  # emptied by a cancel that committed after the list was read
            job = _queue_head(device_type, account.user_id, device_size)
            if job is not None:
                return _start_job(pool, account, job, device_name)
            if device_size is None:
                _recount_queued(account, repaired_by="claim")
    return None


# What devices each pool has, from the app that keeps the devices table (`jobs` names no
# other app): pool -> (registered devices, their largest size, or None when one of them
# takes any size, as a local worker does).
PoolCapacity = tuple[int, int | None]
_pool_capacity_provider: Callable[[str], PoolCapacity] | None = None


def provide_pool_capacity(provider: Callable[[str], PoolCapacity]) -> None:
    """Register where `wait_reason` reads a pool's registered devices from."""
    global _pool_capacity_provider
    _pool_capacity_provider = provider


def wait_reason(job: Job) -> str | None:
    """Why a queued job waits when no registered device of its pool can run it, else None.

    Such a job is passed over by every claim (its user is not charged for it), so it
    never holds up anyone else; this says so instead of leaving it silently queued.
    """
    if job.status != JobStatus.QUEUED or _pool_capacity_provider is None:
        return None
    devices, largest = _pool_capacity_provider(job.device_type)
    if devices == 0:
        return f"no device of pool {job.device_type!r} is registered; it runs when one is"
    if largest is not None and job.size > largest:
        return (
            f"needs a device of size {job.size}; the largest registered in pool "
            f"{job.device_type!r} has size {largest}: it runs when a big enough one registers"
        )
    return None


def _claim_on_postgres(
    device_type: str, device_name: str, device_size: int | None
) -> ClaimedJob | None:
    """`claim_next` as one call of the PL/pgSQL function zypher_claim (jobs/sql/claim.sql)."""
    rows = postgres.call(
        "zypher_claim",
        {"now": timezone.now(), **_claim_params(device_type, device_name, device_size)},
    )
    return _claimed_from_row(rows[0], device_type) if rows else None


def _claim_params(device_type: str, device_name: str, device_size: int | None) -> dict[str, Any]:
    return {
        "device_type": device_type,
        "device": device_name,
        "device_size": device_size,
        "lease_seconds": settings.ZYPHER_LEASE_SECONDS,
    }


def _claimed_from_row(row: Any, device_type: str) -> ClaimedJob | None:
    job_id, public_id, owner_id, owner, kind, input, pool_id, token, cost, weight = row
    if job_id is None:
        return None
    return ClaimedJob(
        id=job_id,
        public_id=str(public_id),
        owner_id=owner_id,
        owner=owner,
        kind=kind,
        input=json.loads(input) if isinstance(input, str) else input,
        device_type=device_type,
        pool_id=pool_id,
        fencing_token=token,
        charged_cost=cost,
        charged_weight=weight,
    )


def _device_seconds(claim: ClaimedJob, duration: float) -> float:
    """`duration`, or the cost charged at the claim when it is not a time (NaN, infinite,
    negative): settled as it is, it would become the user's virtual time and the pool's
    cost estimate, charged to every later job of the pool."""
    if isinstance(duration, int | float) and math.isfinite(duration) and duration >= 0:
        return float(duration)
    log.warning(
        "job %s: duration %r is not a time; settled at its charged cost %s",
        claim.public_id,
        duration,
        claim.charged_cost,
    )
    return claim.charged_cost


def _finish_params(
    claim: ClaimedJob, succeeded: bool, duration: float, result: Any, error: str
) -> dict[str, Any]:
    duration = _device_seconds(claim, duration)
    return {
        "job_id": claim.id,
        "fencing_token": claim.fencing_token,
        "succeeded": succeeded,
        "result": None if result is None else json.dumps(result),
        "error": error,
        "duration": duration,
        "now": timezone.now(),
        "pool_id": claim.pool_id,
        "owner_id": claim.owner_id,
        "charged_cost": claim.charged_cost,
        "charged_weight": claim.charged_weight,
        "public_id": claim.public_id,
        "smoothing": COST_SMOOTHING,
    }


_FINISH_CASTS = {"result": "jsonb"}


ACCOUNTS_PER_READ = 100  # backlogged accounts read at once after the first


def _backlogged_accounts(pool: FairPool) -> Iterator[FairShareAccount]:
    """Backlogged accounts in fair order (index `account_backlogged`), read as they are
    needed: the first alone is the usual case, and no cap stops the walk early."""
    accounts = FairShareAccount.objects.filter(pool=pool, queued_count__gt=0).order_by(
        "virtual_time", "id"
    )
    page = list(accounts.only("id", "user_id", "virtual_time")[:1])
    while page:
        yield from page
        # The next page after the last one tried (keyset, read after it was tried and
        # perhaps repaired), not an offset and not an open cursor across writes.
        last = page[-1]
        page = list(
            accounts.filter(
                Q(virtual_time__gt=last.virtual_time)
                | Q(virtual_time=last.virtual_time, id__gt=last.pk)
            ).only("id", "user_id", "virtual_time")[:ACCOUNTS_PER_READ]
        )


def _fitting(device_type: str, owner_id: int, device_size: int) -> Any:
    return Job.objects.filter(
        device_type=device_type,
        owner_id=owner_id,
        status=JobStatus.QUEUED,
        size__lte=device_size,
    )


def _fits(device_type: str, owner_id: int, device_size: int) -> bool:
    """Whether the user has a queued job of at most `device_size`: the first entry of its
    range of `job_queued_fit`, one probe."""
    return (
        _fitting(device_type, owner_id, device_size)
        .order_by("size")
        .values_list("size", flat=True)
        .first()
        is not None
    )


def _queue_head(device_type: str, owner_id: int, device_size: int | None) -> Job | None:
    """The user's next job: highest priority, then oldest (index `job_queue_head`); on a
    sized device, the same among the jobs that fit it (`_fitting_head`)."""
    jobs = Job.objects.filter(device_type=device_type, owner_id=owner_id, status=JobStatus.QUEUED)
    if device_size is not None:
        head = _fitting_head(device_type, owner_id, device_size)
        if head is None:
            return None
        jobs = jobs.filter(pk=head)
    return (
        jobs.order_by("-priority", "id")
        .select_for_update(skip_locked=True, no_key=True)
        .only("id", "public_id", "kind", "input", "attempts")
        .first()
    )


def _fitting_head(device_type: str, owner_id: int, device_size: int) -> int | None:
    """The id of the user's first fitting job by priority then age, in one probe of
    `job_queued_fit` per distinct size that fits (each probe gives that size's head), not
    a walk over the user's jobs: its jobs too big for the device are never read."""
    best: tuple[int, int] | None = None  # (-priority, id)
    smaller_than = -1
    while True:
        step = (
            _fitting(device_type, owner_id, device_size)
            .filter(size__gt=smaller_than)
            .order_by("size", "-priority", "id")
            .values_list("size", "priority", "id")
            .first()
        )
        if step is None:
            return None if best is None else best[1]
        size, priority, job_id = step
        if best is None or (-priority, job_id) < best:
            best = (-priority, job_id)
        smaller_than = size


def _start_job(pool: FairPool, account: FairShareAccount, job: Job, device_name: str) -> ClaimedJob:
    """Mark `job` running on `device_name` and charge its estimated cost to `account`."""
    weight = account.user.weight
    now = timezone.now()
    token = job.attempts + 1
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        started_at=now,
        device=device_name,
        attempts=token,
        lease_expires_at=now + timedelta(seconds=settings.ZYPHER_LEASE_SECONDS),
        charged_cost=pool.cost_estimate,
        charged_weight=weight,
    )
    FairShareAccount.objects.filter(pk=account.pk).update(
        virtual_time=F("virtual_time") + pool.cost_estimate / weight,
        queued_count=F("queued_count") - 1,
        running_count=F("running_count") + 1,
    )
    if account.virtual_time > pool.virtual_time:
        FairPool.objects.filter(pk=pool.pk).update(virtual_time=account.virtual_time)
    return ClaimedJob(
        id=job.pk,
        public_id=str(job.public_id),
        owner_id=account.user_id,
        owner=account.user.username,
        kind=job.kind,
        input=job.input,
        device_type=pool.device_type,
        pool_id=pool.pk,
        fencing_token=token,
        charged_cost=pool.cost_estimate,
        charged_weight=weight,
    )


def _recount_queued(account: FairShareAccount, *, repaired_by: str) -> None:
    """Repair a counter that says work is queued when none can be taken. The caller holds
    the account's lock, which every change of its queued jobs takes too, so the count
    cannot go stale before it is written."""
    actual = Job.objects.filter(
        owner_id=account.user_id, device_type=account.pool.device_type, status=JobStatus.QUEUED
    ).count()
    if actual == account.queued_count:
        return
    log.warning(
        "account %s: queued_count %s, found %s; repaired", account, account.queued_count, actual
    )
    FairShareAccount.objects.filter(pk=account.pk).update(queued_count=actual)
    QueueRepair.objects.create(
        kind="queued_count",
        subject=f"account {account.user.username} in {account.pool.device_type}",
        detail=f"queued_count was {account.queued_count}, counted {actual}",
        repaired_by=repaired_by,
    )


def finish_job(
    claim: ClaimedJob,
    *,
    succeeded: bool,
    duration: float,
    result: Any = None,
    error: str = "",
) -> bool:
    """Record a job's outcome and settle its cost. False: the claim was lost (fenced off)."""
    if connection.vendor == "postgresql":
        rows = postgres.call(
            "zypher_finish",
            _finish_params(claim, succeeded, duration, result, error),
            _FINISH_CASTS,
        )
        return bool(rows[0][0])
    duration = _device_seconds(claim, duration)
    with transaction.atomic(savepoint=False):
        _lock_pool_and_account(claim.pool_id, claim.owner_id)
        updated = Job.objects.filter(
            pk=claim.id, status=JobStatus.RUNNING, attempts=claim.fencing_token
        ).update(
            status=JobStatus.SUCCEEDED if succeeded else JobStatus.FAILED,
            result=result if succeeded else None,
            error="" if succeeded else error,
            finished_at=timezone.now(),
            duration=duration,
            lease_expires_at=None,
        )
        if not updated:
            return False
        FairShareAccount.objects.filter(pool_id=claim.pool_id, user_id=claim.owner_id).update(
            virtual_time=F("virtual_time") + (duration - claim.charged_cost) / claim.charged_weight,
            running_count=F("running_count") - 1,
            served_seconds=F("served_seconds") + duration,
        )
        FairPool.objects.filter(pk=claim.pool_id).update(
            cost_estimate=F("cost_estimate") * (1 - COST_SMOOTHING) + duration * COST_SMOOTHING
        )
        notify_done(claim.public_id)
    return True


def finish_and_claim_next(
    claim: ClaimedJob,
    device_name: str,
    device_size: int | None = None,
    *,
    succeeded: bool,
    duration: float,
    result: Any = None,
    error: str = "",
) -> tuple[bool, ClaimedJob | None]:
    """Settle a job and claim the device's next one in one transaction.

    The device's idle gap between jobs is then one commit (one WAL flush), not two; on
    PostgreSQL also a single round trip.
    """
    if connection.vendor == "postgresql":
        sql, params = finish_and_claim_statement(
            claim,
            device_name,
            device_size,
            succeeded=succeeded,
            duration=duration,
            result=result,
            error=error,
        )
        return finish_and_claim_answer(postgres.rows(sql, params), claim.device_type)
    with transaction.atomic():
        accepted = finish_job(
            claim, succeeded=succeeded, duration=duration, result=result, error=error
        )
        return accepted, claim_next(claim.device_type, device_name, device_size)


def finish_and_claim_statement(
    claim: ClaimedJob,
    device_name: str,
    device_size: int | None = None,
    *,
    succeeded: bool,
    duration: float,
    result: Any = None,
    error: str = "",
) -> tuple[str, dict[str, Any]]:
    """finish_and_claim_next's PostgreSQL statement and its parameters, for a caller that
    runs it on a connection of its own (the dispatcher's, from its event loop)."""
    params = {
        **_finish_params(claim, succeeded, duration, result, error),
        **_claim_params(claim.device_type, device_name, device_size),
    }
    return postgres.statement("zypher_finish_and_claim", params, _FINISH_CASTS), params


def finish_and_claim_answer(
    rows: list[tuple[Any, ...]], device_type: str
) -> tuple[bool, ClaimedJob | None]:
    """finish_and_claim_next's answer from the rows of its statement."""
    accepted, *row = rows[0]
    return bool(accepted), _claimed_from_row(row, device_type)


def _lock_pool_and_account(pool_id: int, owner_id: int) -> None:
    """Take the pool's and then the account's row lock (the lock order), before a job's."""
    list(FairPool.objects.select_for_update(no_key=True).filter(pk=pool_id).values_list("id"))
    _lock_accounts(FairShareAccount.objects.filter(pool_id=pool_id, user_id=owner_id))


def _lock_accounts(accounts: Any) -> list[FairShareAccount]:
    """Lock accounts in pool-id order (one user's accounts; see the module docstring)."""
    return list(accounts.select_for_update(no_key=True).order_by("pool_id", "user_id"))


def notify_done(public_id: str) -> None:
    """Wake requests waiting for this job (synchronous mode) on PostgreSQL."""
    _notify(DONE_CHANNEL, public_id)


def wake_dispatchers(device_type: str) -> None:
    """Work or a free device appeared in a pool: wake idle dispatchers (PostgreSQL)."""
    _notify(NOTIFY_CHANNEL, device_type)


def _notify(channel: str, payload: str) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


def renew_leases(claims: list[ClaimedJob]) -> set[int]:
    """Extend the leases of the jobs a dispatcher holds; returns the ids it still holds.

    A job missing from the answer was cancelled by an operator or taken over after a
    lost lease: its holder should stop running it.
    """
    if not claims:
        return set()
    held = Q()
    for claim in claims:
        held |= Q(pk=claim.id, attempts=claim.fencing_token)
    expires = timezone.now() + timedelta(seconds=settings.ZYPHER_LEASE_SECONDS)
    with transaction.atomic():
        still_held = (
            Job.objects.select_for_update(no_key=True)
            .filter(held, status=JobStatus.RUNNING)
            .order_by("id")
        )
        ids = set(still_held.values_list("id", flat=True))
        Job.objects.filter(id__in=ids).update(lease_expires_at=expires)
    return ids


def release_job(
    job_id: int, fencing_token: int, reason: str, *, expired_before: datetime | None = None
) -> str | None:
    """Give a running job back: requeue it, or fail it after too many attempts.

    With `expired_before` (the reaper), only if its lease still ran out before then when
    rechecked under the lock: a lease renewed after the reaper read it stays.
    Returns the new status, or None when the job was no longer held with that token.
    """
    owner_and_pool = (
        Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, attempts=fencing_token)
        .values_list("owner_id", "device_type")
        .first()
    )
    if owner_and_pool is None:
        return None
    owner_id, device_type = owner_and_pool
    held = Q(pk=job_id, status=JobStatus.RUNNING, attempts=fencing_token)
    if expired_before is not None:
        held &= Q(lease_expires_at__lt=expired_before)
    with transaction.atomic():
        # The pool first, as a claim holds it: the refund moves the account back in the fair
        # order, and zypher_claim's walk (one step past the last account read) must not see
        # an account move behind it while it runs, or it would pass over it (issue 16).
        _lock_pool_and_account(pool_id_for(device_type), owner_id)
        job = (
            Job.objects.select_for_update(no_key=True)
            .filter(held)
            .only(
                "id",
                "public_id",
                "owner_id",
                "device_type",
                "device",
                "started_at",
                "attempts",
                "charged_cost",
                "charged_weight",
            )
            .first()
        )
        if job is None:
            return None
        account = FairShareAccount.objects.filter(
            pool_id=pool_id_for(device_type), user_id=owner_id
        )
        refund = job.charged_cost / job.charged_weight
        if job.attempts >= settings.ZYPHER_MAX_ATTEMPTS:
            failed = Job.objects.filter(held).update(
                status=JobStatus.FAILED,
                error=f"{reason}; gave up after {job.attempts} attempts",
                finished_at=timezone.now(),
                lease_expires_at=None,
            )
            account.update(
                virtual_time=F("virtual_time") - refund * failed,
                running_count=F("running_count") - failed,
            )
            notify_done(str(job.public_id))
            return JobStatus.FAILED
        requeued = Job.objects.filter(held).update(
            status=JobStatus.QUEUED,
            started_at=None,
            device="",
            lease_expires_at=None,
            error=reason,
            progress=None,  # the next run reports its own
            progress_message="",
        )
        if requeued and job.started_at is not None:
            # The only path that erases a run from the job row: keep its device time for
            # the dashboard's fairness figures (every other attempt stays on the row).
            JobRun.objects.create(
                job_id=job.pk,
                owner_id=owner_id,
                device_type=device_type,
                device=job.device,
                started_at=job.started_at,
                ended_at=timezone.now(),
            )
        account.update(
            virtual_time=F("virtual_time") - refund * requeued,
            running_count=F("running_count") - requeued,
            queued_count=F("queued_count") + requeued,
        )
        wake_dispatchers(device_type)
        return JobStatus.QUEUED


def requeue_expired_leases(limit: int = 100) -> list[tuple[str, str]]:
    """Release running jobs whose lease ran out (their dispatcher died or hung)."""
    now = timezone.now()
    expired = list(
        Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values_list("id", "attempts", "public_id")[:limit]
    )
    outcomes = []
    for job_id, attempts, public_id in expired:
        status = release_job(
            job_id,
            attempts,
            "lease expired: the dispatcher holding it stopped",
            expired_before=now,
        )
        if status is not None:
            outcomes.append((str(public_id), status))
    return outcomes


def cancel_job(job: Job, *, cancelled_by: str = "") -> bool:
    """Cancel a queued job. False when it is no longer queued."""
    with transaction.atomic():
        account = FairShareAccount.objects.filter(
            pool_id=pool_id_for(job.device_type), user_id=job.owner_id
        )
        _lock_accounts(account)
        updated = Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.CANCELLED, finished_at=timezone.now(), cancelled_by=cancelled_by
        )
        if updated:
            account.update(queued_count=F("queued_count") - updated)
            notify_done(str(job.public_id))
    return bool(updated)


def delete_users(user_ids: list[int]) -> list[str]:
    """Delete the users of `user_ids` that have no queued or running job, with their
    accounts and ended jobs; returns the names of those kept because they have some.

    Their rows are locked first (id order), as a submit locks its user's row before the
    accounts: a submit lands wholly before the delete (and its user is kept, its jobs
    live) or after it (and finds no user). Deleting the accounts before the user's row,
    as a plain delete does, deadlocked with a submit holding that row.
    """
    with transaction.atomic():
        locked = dict(
            User.objects.select_for_update()
            .filter(pk__in=user_ids)
            .order_by("pk")
            .values_list("pk", "username")
        )
        live = set(
            Job.objects.filter(
                owner_id__in=list(locked), status__in=[JobStatus.QUEUED, JobStatus.RUNNING]
            ).values_list("owner_id", flat=True)
        )
        User.objects.filter(pk__in=[pk for pk in locked if pk not in live]).delete()
    return [locked[pk] for pk in sorted(live)]


def remove_user_from_queue(
    user: User, *, removed_by: str, deactivate: bool = False, stop_running: bool = False
) -> int:
    """An operator removes `user` from the queue: cancel every queued job (recorded with
    who did it), optionally deactivate the user (new submissions get 403) and stop the
    jobs running now (settled for the device time they used so far; their dispatcher
    sees the lease gone and stops the device).

    The user's accounts are locked first (pool-id order), so a submit or a requeue of
    theirs waits and lands after; each counter moves by the rows cancelled in its pool.
    Returns the number of jobs cancelled.
    """
    now = timezone.now()
    reason = f"cancelled by operator {removed_by}"
    cancelled = 0
    with transaction.atomic():
        if deactivate:
            User.objects.filter(pk=user.pk).update(is_active=False)
        locked = _lock_accounts(FairShareAccount.objects.filter(user=user))
        # Read, not locked (a pool's device type never changes): a join would lock it too.
        device_types = dict(
            FairPool.objects.filter(pk__in=[a.pool_id for a in locked]).values_list(
                "id", "device_type"
            )
        )
        accounts = {device_types[account.pool_id]: account for account in locked}
        for device_type, account in accounts.items():
            mine = Job.objects.filter(owner=user, device_type=device_type)
            # Under the account's lock no queued job of this account can change, so the
            # ids read here are the rows the update cancels (no id list in the UPDATE, which
            # SQLite builds with a parameter limit would refuse for a large backlog).
            queued = list(mine.filter(status=JobStatus.QUEUED).values_list("public_id", flat=True))
            removed = mine.filter(status=JobStatus.QUEUED).update(
                status=JobStatus.CANCELLED, finished_at=now, cancelled_by=removed_by, error=reason
            )
            FairShareAccount.objects.filter(pk=account.pk).update(
                queued_count=F("queued_count") - removed
            )
            cancelled += removed
            for public_id in queued:
                notify_done(str(public_id))
        if stop_running:
            cancelled += _stop_running(user, accounts, now, removed_by, reason)
    return cancelled


def _stop_running(
    user: User,
    accounts: dict[str, FairShareAccount],
    now: datetime,
    removed_by: str,
    reason: str,
) -> int:
    """Cancel a user's running jobs and settle the device time each has used. All their
    jobs are locked in one statement, in id order (after all their accounts): lease
    renewals lock a dispatcher's jobs of every pool in id order too."""
    stopped = 0
    running = (
        Job.objects.select_for_update(no_key=True)
        .filter(owner=user, status=JobStatus.RUNNING, device_type__in=list(accounts))
        .order_by("id")
    )
    fields = (
        "id",
        "public_id",
        "device_type",
        "attempts",
        "started_at",
        "charged_cost",
        "charged_weight",
    )
    for job in list(running.only(*fields)):
        account = accounts[job.device_type]
        used = max(0.0, (now - job.started_at).total_seconds()) if job.started_at else 0.0
        changed = Job.objects.filter(
            pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts
        ).update(
            status=JobStatus.CANCELLED,
            finished_at=now,
            duration=used,
            cancelled_by=removed_by,
            error=reason,
            lease_expires_at=None,
        )
        if not changed:
            continue
        FairShareAccount.objects.filter(pk=account.pk).update(
            running_count=F("running_count") - changed,
            virtual_time=F("virtual_time") + (used - job.charged_cost) / job.charged_weight,
            served_seconds=F("served_seconds") + used,
        )
        notify_done(str(job.public_id))
        stopped += changed
    return stopped


def queue_position(job: Job) -> int | None:
    """Estimate how many jobs the policy will dispatch before `job` (None if not queued).

    The owner's jobs ahead of it are exact; each other backlogged user is expected to
    get the dispatches it needs to catch up with the virtual time at which this job
    starts, at most its queued count. Two queries: the owner's account with its pool,
    weight and count of jobs ahead; then the other backlogged accounts (job detail
    reads call this on every poll).
    """
    if job.status != JobStatus.QUEUED:
        return None
    ahead = Job.objects.filter(
        Q(priority__gt=job.priority) | Q(priority=job.priority, id__lt=job.pk),
        owner_id=job.owner_id,
        device_type=job.device_type,
        status=JobStatus.QUEUED,
    )
    # COUNT as a plain function, not an aggregate: no GROUP BY, one row, as a subquery.
    counted = ahead.order_by().annotate(n=Func(F("id"), function="COUNT")).values("n")
    mine = (
        FairShareAccount.objects.filter(pool__device_type=job.device_type, user_id=job.owner_id)
        .annotate(own_ahead=Subquery(counted))
        .values_list(
            "id", "pool_id", "virtual_time", "pool__cost_estimate", "user__weight", "own_ahead"
        )
        .first()
    )
    if mine is None:  # no account (yet): only the owner's own jobs are known to be ahead
        return ahead.count()
    account_id, pool_id, account_time, cost_estimate, weight, own_ahead = mine
    cost = max(cost_estimate, 1e-9)
    start = account_time + own_ahead * cost / weight
    others = (
        FairShareAccount.objects.filter(
            pool_id=pool_id, queued_count__gt=0, virtual_time__lte=start
        )
        .exclude(pk=account_id)
        .values_list("id", "virtual_time", "queued_count", "user__weight")
    )
    position = own_ahead
    for other_id, virtual_time, queued, other_weight in others:
        dispatches = math.ceil((start - virtual_time) * other_weight / cost)
        if other_id < account_id:  # wins a tie on virtual time
            dispatches = max(dispatches, 1)
        position += min(queued, dispatches)
    return position
