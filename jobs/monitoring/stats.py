"""The operators' dashboard figures: queue depth, devices, throughput, service time, fairness.

Each function is a few aggregate queries that stay fast with millions of jobs: the queue
is read through its partial indexes and the counters of `FairShareAccount`, history only
through a bounded window on `finished_at` (index `job_finished_at`), and Python loops run
over users, pools, kinds and minutes, never over jobs. `bench/bench_dashboard.py` times
every function here with 1,000,000 job rows.

Fairness over the window [T0, T1] (the last hour by default), per pool, against the fluid
fair schedule (`jobs.fairshare.fluid_shares` is the plain reference of the same figures):

    n_u(t)   jobs of user u in the pool queued or running at t (u is *in the system*
             while n_u >= 1: from the job's creation, or its start if earlier, to its end)
    m(t)     the pool's jobs on a device at t (service really delivered: idle devices
             are not unfairness; the idle-gap histogram shows them)
    phi_u(t) = min(n_u(t), theta(t) * w_u), theta(t) such that sum_u phi_u(t) = m(t)
             (weighted water-filling: u cannot use more devices than it has jobs;
             with one device, phi_u = m * w_u / sum of the waiting users' weights)
    entitled E_u = integral over [T0, T1] of phi_u dt      (device seconds)
    received R_u = device time of u's runs inside the window: every attempt, including
             runs that were requeued or stopped (each job row's own run, and a JobRun row
             for each requeued attempt, the only kind the row forgets)
    lag      L_u = E_u - R_u    (positive: owed time; the lags of a pool sum to zero)
    flagged  |L_u| > lag_bound_seconds = 2 C_max + ZYPHER_DASHBOARD_LAG_SLACK_SECONDS
             (C_max: the pool's longest run in the window) AND some v and a stretch
             where u and v both had a job queued (in the system, not on a device)
             with, over an interval inside it,
             |R_u/w_u - R_v/w_v| > M * (C_max/w_u + C_max/w_v) + slack
             (M: the most of the pool's jobs on a device at once), `unfair_pair` says
             with whom (`jobs.fairshare.flagged_users` is the reference). A large lag
             alone can be the fluid reference's artefact: no scheduler that learns a
             job's length only as it ends keeps it within a constant (`jobs.fairshare`'s
             docstring); a large lag where the policy's own pairwise guarantee also
             failed is real unfairness, and a starved user breaks both. The lag test is
             cheap and comes first: the pair check runs only for the users past it
    Jain's index  (sum x_u)^2 / (k * sum x_u^2), x_u = R_u / E_u, over the k users with
             E_u > JAIN_FLOOR_SECONDS (1 = everyone got what they were entitled to)
    max normalised gap  max |R_i/w_i - R_j/w_j| over the common part of two users'
             longest stretches in the system (every pair of the pool's users, exact),
             beside the SFQ bound C_max/w_i + C_max/w_j for one device

No loop over jobs or change points: two plain queries and array arithmetic. One
query (`_intervals_sql`) reads the window's job intervals (arrival, start, end, and every
requeued attempt), with no sort in the database: on PostgreSQL as one row per pool of
binary arrays of raw timestamps (`array_send`, read by `np.frombuffer`: no value is
formatted, parsed or boxed one by one), on SQLite as seconds, one row each;
another (`_queued_sql`) each user's first `cap` queued jobs per pool (cap = the largest
number of jobs of any pool on a device at once: phi_u <= m, so min(n_u, cap) changes no
rate), by a skip scan of the partial index `job_queued_arrival` on PostgreSQL. numpy then
derives m(t), each user's n_u(t), the received time and the longest run, and sweeps each
pool (`_sweep_pool`): V = integral of theta, theta = m / W wherever an exact per-segment
test shows nobody capped, and vectorised water-filling over all other segments at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, Min, OuterRef, Q, Subquery, Sum
from django.db.models.expressions import RawSQL
from django.db.models.functions import TruncMinute
from django.utils import timezone

from jobs.fairshare import lag_bound
from jobs.models import FairShareAccount, Job, JobRun, JobStatus, QueueRepair, User

WINDOW = timedelta(hours=1)
THROUGHPUT_MINUTES = (1, 5, 15, 60)
# "How fast the service goes right now": device seconds delivered over this many minutes.
RECENT_MINUTES = 5
# Upper edges (seconds) of the idle-gap histogram's buckets; the last bucket is open.
IDLE_GAP_EDGES = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
TOP_USERS = 10
MAX_RUNNING_LISTED = 200
COMPLETED = (JobStatus.SUCCEEDED, JobStatus.FAILED)  # ended on a device
# Jain's index leaves out users entitled to less than this: their ratio R/E is noise.
JAIN_FLOOR_SECONDS = 1.0


class PoolDepth(TypedDict):
    pool: str
    queued: int
    running: int


class PriorityDepth(TypedDict):
    priority: int
    queued: int


class QueueDepth(TypedDict):
    total: int
    by_pool: list[PoolDepth]
    by_priority: list[PriorityDepth]


class QueuedUser(TypedDict):
    user: str
    user_pk: int
    weight: float
    is_active: bool
    queued: int
    running: int
    oldest_queued_age_seconds: float | None


class RunningJob(TypedDict):
    device: str
    pool: str
    user: str
    job: str
    kind: str
    since: str
    running_seconds: float
    progress: float | None  # what its handler last reported, 0..1
    progress_message: str


class DeviceState(TypedDict):
    device: str
    pool: str
    kind: str
    state: str
    job: str | None
    last_seen: str | None


class MinuteCount(TypedDict):
    minute: str
    succeeded: int
    failed: int


class Throughput(TypedDict):
    per_minute: dict[str, float]  # "1", "5", "15", "60" minutes → jobs ended per minute
    last_hour: list[MinuteCount]  # oldest first, one entry per minute
    busy_devices: float  # device seconds per second over the last RECENT_MINUTES
    jobs_per_minute_now: float


class ServiceTime(TypedDict):
    kind: str
    count: int
    mean_seconds: float
    p95_seconds: float


class UserShare(TypedDict):
    pool: str
    user: str
    user_pk: int
    weight: float
    received_seconds: float
    entitled_seconds: float
    received_share: float  # of the pool's device seconds in the window
    entitled_share: float
    lag_seconds: float
    oldest_queued_age_seconds: float | None
    queued: int
    running: int
    flagged: bool  # |lag| beyond lag_bound_seconds and a pair beyond its bound (`unfair_pair`)
    unfair_pair: UnfairPair | None


class UnfairPair(TypedDict):
    """Why a user is flagged: over an interval inside a stretch where it and `user` both
    had work queued, their normalised service differed by `gap_seconds` (|R_u/w_u -
    R_v/w_v|), more than `bound_seconds` (devices * (C_max/w_u + C_max/w_v) + slack)."""

    user: str
    gap_seconds: float
    bound_seconds: float
    over_seconds: float  # the length of that common stretch


class IdleGap(TypedDict):
    edges: list[float]
    counts: list[int]
    total: int
    mean_seconds: float | None


class NormalisedGap(TypedDict):
    users: list[str]
    seconds: float  # |R_i/w_i - R_j/w_j|
    over_seconds: float  # the length of the common stretch
    bound_seconds: float  # C_max/w_i + C_max/w_j


class PoolSummary(TypedDict):
    pool: str
    device_seconds: float
    longest_job_seconds: float
    lag_bound_seconds: float  # 2 C_max + slack: what a fair run of users of one weight
    # arriving with their work stays within; no bound in general, so flagged only with a pair
    devices: int  # the most jobs of the pool on a device at once: scales the pair bound
    jain_index: float | None
    max_normalised_gap: NormalisedGap | None


class PoolFairness(PoolSummary):
    shares: list[UserShare]  # most owed first


class Fairness(TypedDict):
    window_seconds: float
    device_seconds: float
    jain_index: float | None  # over every pool's users
    pools: list[PoolSummary]  # their users are the top-level `shares`, with `pool`
    oldest_queued_age_seconds: float | None
    idle_gap: IdleGap


# --- the queue ---------------------------------------------------------------------------


@contextmanager
def _without_parallel_workers() -> Iterator[None]:
    """Run the queries inside on one PostgreSQL backend. The queue's GROUP BY is planned as
    a parallel index-only scan, whose workers take longer to start than they save: with
    100,000 queued jobs on 2 cores, 49 against 23 ms (a probe alternating the setting in
    one session); `bench/bench_dashboard.py`'s queue depth went from 24 to 39 ms in three
    runs before to 17 ms after. No other figure of the dashboard gets a parallel plan."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        yield


def queue_depth() -> QueueDepth:
    """Queued jobs in all, per pool and per priority (one GROUP BY over the queued jobs,
    read from a partial index of queued jobs), and running jobs per pool."""
    with _without_parallel_workers():
        rows = list(
            Job.objects.filter(status=JobStatus.QUEUED)
            .values_list("device_type", "priority")
            .annotate(n=Count("id"))
            .order_by()
        )
    by_pool: dict[str, int] = {}
    by_priority: dict[int, int] = {}
    for pool, priority, count in rows:
        by_pool[pool] = by_pool.get(pool, 0) + count
        by_priority[priority] = by_priority.get(priority, 0) + count
    running = dict(
        Job.objects.filter(status=JobStatus.RUNNING)
        .values_list("device_type")
        .annotate(n=Count("id"))
        .order_by()
    )
    pools = sorted(set(by_pool) | set(running))
    return {
        "total": sum(by_pool.values()),
        "by_pool": [
            {"pool": pool, "queued": by_pool.get(pool, 0), "running": running.get(pool, 0)}
            for pool in pools
        ],
        "by_priority": [
            {"priority": priority, "queued": count}
            for priority, count in sorted(by_priority.items(), reverse=True)
        ],
    }


def _oldest_queued_created_at() -> Subquery:
    """Per user (OuterRef "pk"): the creation time of their oldest queued job, one probe of
    the partial index `job_queued_oldest` (ids grow with age)."""
    return Subquery(
        Job.objects.filter(owner_id=OuterRef("pk"), status=JobStatus.QUEUED)
        .order_by("id")
        .values("created_at")[:1]
    )


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def queued_by_user(limit: int = TOP_USERS, now: datetime | None = None) -> list[QueuedUser]:
    """The users with the most queued jobs, from the scheduler's per-account counters."""
    now = now or timezone.now()
    top = list(
        FairShareAccount.objects.values("user_id")
        .annotate(queued=Sum("queued_count"), running=Sum("running_count"))
        .filter(queued__gt=0)
        .order_by("-queued", "user_id")[:limit]
    )
    users = {
        user.pk: user
        for user in User.objects.filter(pk__in=[row["user_id"] for row in top]).annotate(
            oldest_queued=_oldest_queued_created_at()
        )
    }
    return [
        {
            "user": users[row["user_id"]].username,
            "user_pk": row["user_id"],
            "weight": users[row["user_id"]].weight,
            "is_active": users[row["user_id"]].is_active,
            "queued": row["queued"],
            "running": row["running"],
            "oldest_queued_age_seconds": _age(now, users[row["user_id"]].oldest_queued),
        }
        for row in top
    ]


def oldest_queued_age(now: datetime | None = None) -> float | None:
    """Age of the oldest queued job: the oldest of each backlogged user's oldest, one probe
    of `job_queued_oldest` per backlogged user. (`ORDER BY id LIMIT 1` over the queued
    jobs tempts PostgreSQL into walking the primary key through the whole history.)"""
    now = now or timezone.now()
    backlogged = FairShareAccount.objects.filter(queued_count__gt=0).values("user_id")
    oldest = (
        User.objects.filter(pk__in=backlogged)
        .annotate(oldest_queued=_oldest_queued_created_at())
        .aggregate(oldest=Min("oldest_queued"))["oldest"]
    )
    return _age(now, oldest)


# --- the devices ---------------------------------------------------------------------------


def running_jobs(
    now: datetime | None = None, limit: int | None = MAX_RUNNING_LISTED
) -> list[RunningJob]:
    """Who holds each device: the running jobs, longest-running first (None: all)."""
    now = now or timezone.now()
    rows = (
        Job.objects.filter(status=JobStatus.RUNNING)
        .order_by("started_at", "id")
        .values_list(
            "device",
            "device_type",
            "owner__username",
            "public_id",
            "kind",
            "started_at",
            "progress",
            "progress_message",
        )[:limit]
    )
    return [
        {
            "device": device,
            "pool": pool,
            "user": user,
            "job": str(public_id),
            "kind": kind,
            "since": started_at.isoformat() if started_at else "",
            "running_seconds": _age(now, started_at) or 0.0,
            "progress": progress,
            "progress_message": progress_message,
        }
        for device, pool, user, public_id, kind, started_at, progress, progress_message in rows
    ]


# The app that keeps a table of devices supplies its rows (`devices.apps` registers one at
# start-up): `jobs` knows devices only by the names its jobs ran on.
_device_states_provider: Callable[[int | None], list[DeviceState]] | None = None


def provide_device_states(provider: Callable[[int | None], list[DeviceState]]) -> None:
    """Register where the dashboard and `/metrics` read registered devices from; the
    provider takes how many to list at most (None: all)."""
    global _device_states_provider
    _device_states_provider = provider


def device_states(limit: int | None = MAX_RUNNING_LISTED) -> list[DeviceState]:
    """Registered devices and their states (at most `limit`; None lists every one, as
    `/metrics` does), or none when no app provides them."""
    if _device_states_provider is None:
        return []
    return _device_states_provider(limit)


# --- throughput and service time --------------------------------------------------------------


def throughput(now: datetime | None = None) -> Throughput:
    """Jobs ended on a device per minute over the last 1, 5, 15 and 60 minutes, the last
    hour minute by minute, and the device seconds delivered per second just now."""
    now = now or timezone.now()
    in_window = Q(finished_at__gt=now - WINDOW, finished_at__lte=now, status__in=COMPLETED)
    counts = Job.objects.filter(in_window).aggregate(
        **{
            f"m{minutes}": Count("id", filter=Q(finished_at__gt=now - timedelta(minutes=minutes)))
            for minutes in THROUGHPUT_MINUTES
        },
        recent_seconds=Sum(
            "duration", filter=Q(finished_at__gt=now - timedelta(minutes=RECENT_MINUTES))
        ),
    )
    # The chart: 60 whole minutes, the current one last.
    current_minute = now.replace(second=0, microsecond=0)
    first_minute = current_minute - timedelta(minutes=59)
    per_minute = (
        Job.objects.filter(
            finished_at__gte=first_minute, finished_at__lte=now, status__in=COMPLETED
        )
        .annotate(minute=TruncMinute("finished_at"))
        .values_list("minute", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    by_minute: dict[datetime, dict[str, int]] = {}
    for minute, status, count in per_minute:
        by_minute.setdefault(minute, {})[status] = count
    last_hour: list[MinuteCount] = []
    for offset in range(60):
        minute = first_minute + timedelta(minutes=offset)
        found = by_minute.get(minute, {})
        last_hour.append(
            {
                "minute": minute.isoformat(),
                "succeeded": found.get(JobStatus.SUCCEEDED, 0),
                "failed": found.get(JobStatus.FAILED, 0),
            }
        )
    return {
        "per_minute": {
            str(minutes): counts[f"m{minutes}"] / minutes for minutes in THROUGHPUT_MINUTES
        },
        "last_hour": last_hour,
        "busy_devices": (counts["recent_seconds"] or 0.0) / (RECENT_MINUTES * 60),
        "jobs_per_minute_now": float(counts["m1"]),
    }


def _window_params(now: datetime) -> list[Any]:
    adapt = connection.ops.adapt_datetimefield_value
    return [adapt(now - WINDOW), adapt(now)]


def service_time(now: datetime | None = None) -> list[ServiceTime]:
    """Mean and 95th percentile (nearest rank) of device time per kind, over the window.

    One pass of window functions over the window's jobs, on SQLite and PostgreSQL alike
    (SQLite has no percentile aggregate).
    """
    now = now or timezone.now()
    table = Job._meta.db_table
    sql = f"""
        SELECT kind, n, mean, duration FROM (
            SELECT kind, duration,
                   ROW_NUMBER() OVER (PARTITION BY kind ORDER BY duration) AS position,
                   COUNT(*) OVER (PARTITION BY kind) AS n,
                   AVG(duration) OVER (PARTITION BY kind) AS mean
            FROM {table}
            WHERE finished_at > %s AND finished_at <= %s
              AND status IN ('succeeded', 'failed') AND duration IS NOT NULL
        ) ranked
        WHERE position = (95 * n + 99) / 100
        ORDER BY kind
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, _window_params(now))
        rows = cursor.fetchall()
    return [
        {"kind": kind, "count": n, "mean_seconds": float(mean), "p95_seconds": float(p95)}
        for kind, n, mean, p95 in rows
    ]


# --- fairness -------------------------------------------------------------------------------


def _seconds_sql(column: str) -> str:
    """`column` as seconds after the window's start (`%(t0)s`), a float on both databases
    (PostgreSQL's EXTRACT answers a slow numeric; date_part a double)."""
    if connection.vendor == "postgresql":
        return f"date_part('epoch', {column} - %(t0)s)"
    return f"((julianday({column}) - julianday(%(t0)s)) * 86400.0)"


def _intervals_sql() -> str:
    """The window's job intervals: (pool, owner, arrived, started, left) for the jobs that
    ended in the window and the running ones (in the system from arrival to their end, on
    a device from their start; left NULL while running), and (pool, owner, NULL, started,
    ended) for every requeued attempt (a JobRun row: the only run the job row forgets).

    On PostgreSQL one row per pool whose columns are arrays in PostgreSQL's binary format
    (`array_send`): the owners as int8, the times as the raw timestamptz (microseconds
    since 2000, NULL as 'infinity'), turned into numpy arrays by `_binary_int8`: no
    conversion per value on either side (30,000 rows of floats cost more to format,
    send and parse than to read). On SQLite one row per interval, times as seconds after
    the window's start (`%(t0)s`). No sort in the database: the sweep sorts arrays."""
    job, run = Job._meta.db_table, JobRun._meta.db_table
    if connection.vendor == "postgresql":
        arrived, started, finished, ended = (
            "LEAST(started_at, created_at)",  # NULL only if both are
            "started_at",
            "finished_at",
            "ended_at",
        )
    else:
        arrived = _seconds_sql(
            "CASE WHEN started_at < created_at THEN started_at ELSE created_at END"
        )
        started, finished, ended = (
            _seconds_sql("started_at"),
            _seconds_sql("finished_at"),
            _seconds_sql("ended_at"),
        )
    rows = f"""
        SELECT device_type, owner_id, {arrived}, {started}, {finished} FROM {job}
        WHERE finished_at > %(t0)s AND finished_at <= %(t1)s
        UNION ALL
        SELECT device_type, owner_id, {arrived}, {started}, NULL FROM {job}
        WHERE status = 'running'
        UNION ALL
        SELECT device_type, owner_id, NULL, {started}, {ended} FROM {run}
        WHERE ended_at > %(t0)s AND started_at < %(t1)s
    """
    if connection.vendor != "postgresql":
        return rows
    times = ", ".join(
        f"array_send(array_agg(COALESCE({column}, 'infinity'::timestamptz)))"
        for column in ("arrived", "started", "left_at")
    )
    return f"""
        SELECT device_type, array_send(array_agg(owner_id::bigint)), {times}
        FROM ({rows}) AS intervals (device_type, owner_id, arrived, started, left_at)
        GROUP BY device_type
    """


# PostgreSQL's binary array of 8-byte values: after a 20-byte header (one dimension), each
# element as its length (4 bytes) and its value, big-endian.
_BINARY_INT8 = np.dtype([("size", ">i4"), ("value", ">i8")])
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_INFINITY = np.iinfo(np.int64).max  # timestamptz 'infinity'


def _binary_int8(data: bytes) -> np.ndarray:
    """An int8[] or timestamptz[] without NULLs from `array_send`, as int64."""
    dimensions, has_null, _, length, _ = np.frombuffer(data, ">i4", count=5).tolist()
    if dimensions != 1 or has_null:
        raise ValueError("expected a one-dimensional array without NULLs")
    return np.frombuffer(data, _BINARY_INT8, count=length, offset=20)["value"].astype(np.int64)


def _binary_seconds(data: bytes, t0: datetime) -> np.ndarray:
    """A timestamptz[] from `array_send` as seconds after `t0` ('infinity' as NaN): the
    same doubles as PostgreSQL's date_part('epoch', at - t0) within a day of t0 (one
    rounding of an exact count of microseconds)."""
    micros = _binary_int8(data)
    origin = (t0 - _POSTGRES_EPOCH) // timedelta(microseconds=1)
    return np.where(micros == _INFINITY, np.nan, (micros - origin) / 1e6)


def _fetch_intervals(params: dict[str, Any], t0: datetime) -> dict[str, _PoolIntervals]:
    """Each pool's rows of `_intervals_sql` as arrays."""
    with connection.cursor() as cursor:
        cursor.execute(_intervals_sql(), params)
        rows = cursor.fetchall()
    if connection.vendor == "postgresql":
        return {
            pool: _PoolIntervals(
                _binary_int8(owners),
                _binary_seconds(arrived, t0),
                _binary_seconds(started, t0),
                _binary_seconds(left, t0),
            )
            for pool, owners, arrived, started, left in sorted(rows)
        }
    pools: dict[str, _PoolIntervals] = {}
    pool_of, owner, arrived_at, started_at, left_at = _columns(rows, 5)
    for pool in sorted(set(pool_of.tolist())):
        mine = pool_of == pool
        pools[pool] = _PoolIntervals(owner[mine], arrived_at[mine], started_at[mine], left_at[mine])
    return pools


def _queued_sql() -> str:
    """(pool, owner, arrived) of each user's first `%(cap)s` queued jobs in each pool. They
    stay to the end of the window, and the fair rates use no more of them than a pool's
    largest number of jobs on a device at once (phi_u <= m(t), so min(n_u, cap) gives the
    same rates for any cap at least that). On PostgreSQL, a skip scan of the partial index
    `job_queued_arrival` (pool, owner, created_at where queued): one probe for each
    (pool, owner) with queued jobs and one for its first arrivals, not a read of the whole
    backlog, answered as one row of binary arrays per pool (as `_intervals_sql`); on
    SQLite, ROW_NUMBER over the same index, one row per job, as seconds."""
    job = Job._meta.db_table
    if connection.vendor == "postgresql":
        return f"""
            WITH RECURSIVE heads AS (
                (SELECT device_type, owner_id FROM {job} WHERE status = 'queued'
                 ORDER BY device_type, owner_id LIMIT 1)
                UNION ALL
                SELECT later.device_type, later.owner_id FROM heads CROSS JOIN LATERAL (
                    SELECT device_type, owner_id FROM {job}
                    WHERE status = 'queued'
                      AND (device_type, owner_id) > (heads.device_type, heads.owner_id)
                    ORDER BY device_type, owner_id LIMIT 1
                ) later
            )
            SELECT heads.device_type, array_send(array_agg(heads.owner_id::bigint)),
                   array_send(array_agg(first.created_at))
            FROM heads CROSS JOIN LATERAL (
                SELECT created_at FROM {job}
                WHERE status = 'queued' AND device_type = heads.device_type
                  AND owner_id = heads.owner_id AND created_at < %(t1)s
                ORDER BY created_at LIMIT %(cap)s
            ) first
            GROUP BY heads.device_type
        """
    return f"""
        SELECT device_type, owner_id, {_seconds_sql("created_at")} FROM (
            SELECT device_type, owner_id, created_at,
                   ROW_NUMBER() OVER (PARTITION BY device_type, owner_id ORDER BY created_at) AS k
            FROM {job} WHERE status = 'queued' AND created_at < %(t1)s
        ) ranked
        WHERE k <= %(cap)s
    """


@dataclass
class _Waiting:
    """One user's figures in a pool (see `_sweep_pool`)."""

    weight: float
    entitled: float = 0.0
    received: float = 0.0
    longest: tuple[float, float] = (0.0, 0.0)  # the longest stretch in the system


@dataclass
class _Busy:
    """m(t), the pool's jobs on a device, as a step function over [0, end]: `at` sorted
    (before the window counts as its start) and `level` after each point."""

    at: np.ndarray = field(default_factory=lambda: np.zeros(0))
    level: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def from_changes(cls, changes: list[tuple[float, int]], end: float) -> _Busy:
        at = np.array([change[0] for change in changes], dtype=float)
        moves = np.array([change[1] for change in changes], dtype=np.int64)
        return cls.from_arrays(at, moves, end)

    @classmethod
    def from_arrays(cls, at: np.ndarray, moves: np.ndarray, end: float) -> _Busy:
        order = np.argsort(at, kind="stable")
        return cls(np.clip(at[order], 0.0, end), np.cumsum(moves[order]))

    def level_on(self, cut_of: np.ndarray, segments: int) -> np.ndarray:
        """m over each of `segments` segments, given the segment each point of `at` opens
        (non-decreasing, as `at` is): the level after the last point at or before it."""
        last = np.full(segments + 1, -1)
        if len(cut_of):
            final = np.append(cut_of[1:] != cut_of[:-1], True)  # the last of an instant
            last[cut_of[final]] = np.flatnonzero(final)
        last = np.maximum.accumulate(last)[:-1]
        if not len(self.level):
            return np.zeros(segments)
        return np.where(last >= 0, self.level[np.maximum(last, 0)], 0).astype(float)

    @property
    def most(self) -> int:
        return int(self.level.max(initial=0))


def _covering_min(low: np.ndarray, high: np.ndarray, value: np.ndarray, size: int) -> np.ndarray:
    """For each of `size` positions, the least `value` of the ranges [low, high) covering
    it (inf where none does), without a loop over ranges: each range is written on the
    two power-of-two blocks covering it (as a sparse table reads them), then every level
    is pushed down onto the level below."""
    result = np.full(size, np.inf)
    if not len(low) or not size:
        return result
    length = high - low
    level = (np.frexp(length)[1] - 1).astype(np.int64)  # floor(log2), exact on integers
    levels = int(level.max()) + 1
    flat = np.full(levels * size, np.inf)
    block = np.left_shift(1, level)
    np.minimum.at(flat, level * size + low, value)
    np.minimum.at(flat, level * size + high - block, value)
    table = flat.reshape(levels, size)
    for k in range(levels - 1, 0, -1):
        half = 1 << (k - 1)
        np.minimum(table[k - 1], table[k], out=table[k - 1])
        np.minimum(table[k - 1][half:], table[k][: size - half], out=table[k - 1][half:])
    return table[0]


def _sweep_pool(
    changes: list[tuple[int, float, int]] | tuple[np.ndarray, np.ndarray, np.ndarray],
    busy: _Busy,
    weights: dict[int, float],
    end: float,
) -> dict[int, _Waiting]:
    """E_u over [0, end] from the changes (user, at, min(n_u, cap)) of the users' jobs in
    the system (time-sorted for each user; as tuples or as three arrays) and the pool's
    busy devices m(t), as array operations: no loop over change points or users.

    The instants where anything changes cut [0, end] into segments of constant m and n_u.
    V, the virtual clock, advances by theta dt (so E_u = w_u * the V of u's segments,
    plus the capped users' own rate). Where nobody is capped, which is exact when every
    present user has n_u / w_u >= m / W (W: the present users' weight; the least n_u / w_u
    over each segment comes from `_covering_min`), theta = m / W. The other segments are
    water-filled all at once: their present users' rows sorted by (segment, n_u / w_u),
    theta_k = (m - sum_{i<k} n_i) / (W - sum_{i<k} w_i) over each segment's prefix; the
    capped users are the prefix with n_k <= theta_k w_k (once a row fails, every later
    one does), and the first uncapped row gives the segment's theta.
    """
    if isinstance(changes, tuple):
        owners, times, jobs = changes
    else:
        count = len(changes)
        owners = np.fromiter((change[0] for change in changes), dtype=np.int64, count=count)
        times = np.fromiter((change[1] for change in changes), dtype=float, count=count)
        jobs = np.fromiter((change[2] for change in changes), dtype=np.int64, count=count)
    everyone = np.unique(owners).tolist()
    users = {user_id: _Waiting(weights[user_id]) for user_id in everyone}
    if not len(owners):
        return users
    times = np.clip(times, 0.0, end)
    same_owner = owners[1:] == owners[:-1]
    if not np.all((owners[1:] > owners[:-1]) | (same_owner & (times[1:] >= times[:-1]))):
        order = np.lexsort((times, owners))  # stable: of one instant, the last change holds
        owners, times, jobs = owners[order], times[order], jobs[order]
        same_owner = owners[1:] == owners[:-1]
    # Each change opens a stretch of constant n_u up to the user's next change (or the end).
    same_next = np.append(same_owner, False)
    stops = np.where(same_next, np.append(times[1:], end), end)
    kept = (jobs > 0) & (stops > times)
    owners, starts, stops, jobs = owners[kept], times[kept], stops[kept], jobs[kept]
    # The segments' bounds, and which bound each stretch and busy change falls on.
    cuts, where = np.unique(
        np.concatenate(([0.0, end], starts, stops, busy.at)), return_inverse=True
    )
    segments = len(cuts) - 1
    seconds = np.diff(cuts)
    low, high = where[2 : 2 + len(starts)], where[2 + len(starts) : 2 + 2 * len(starts)]
    level = busy.level_on(where[2 + 2 * len(starts) :], segments)
    ids, index = np.unique(owners, return_inverse=True)
    weight = np.array([weights[user_id] for user_id in ids.tolist()], dtype=float)[index]
    # W and the number present over each segment: a difference array of the stretches.
    weight_in = np.cumsum(
        np.bincount(low, weight, segments + 1) - np.bincount(high, weight, segments + 1)
    )[:-1]
    present = np.cumsum(
        np.bincount(low, minlength=segments + 1) - np.bincount(high, minlength=segments + 1)
    )[:-1]
    served = (present > 0) & (level > 0)
    theta = np.divide(level, weight_in, out=np.zeros(segments), where=served)
    ratio = jobs / weight
    least = _covering_min(low, high, ratio, segments)
    # With a margin: a segment water-filled although nobody is capped gets the same theta.
    capped_maybe = served.copy()  # inf * 0 is NaN: compare only where someone waits
    capped_maybe[served] = least[served] * weight_in[served] <= level[served] * (1 + 1e-9)
    extra = np.zeros(len(owners))
    if capped_maybe.any():
        theta, extra = _water_fill(
            capped_maybe, low, high, jobs, weight, ratio, level, seconds, theta
        )
    virtual = np.concatenate(([0.0], np.cumsum(theta * seconds)))
    entitled = weight * (virtual[high] - virtual[low]) + extra
    totals = np.bincount(index, entitled, len(ids))
    # Stays in the system: runs of a user's stretches that touch (a gap opens a new one).
    new_stay = np.ones(len(owners), dtype=bool)
    new_stay[1:] = (owners[1:] != owners[:-1]) | (starts[1:] > stops[:-1])
    stay_start = starts[new_stay]
    stay_stop = np.maximum.reduceat(stops, np.flatnonzero(new_stay))
    stay_owner = owners[new_stay]
    lengths = stay_stop - stay_start
    # Each user's first longest stay (stays are in (user, time) order).
    heads = np.flatnonzero(np.append(True, stay_owner[1:] != stay_owner[:-1]))
    most = np.repeat(np.maximum.reduceat(lengths, heads), np.diff(np.append(heads, len(lengths))))
    longest = np.flatnonzero(lengths == most)
    leads = longest[np.append(True, stay_owner[longest][1:] != stay_owner[longest][:-1])]
    for position, user_id in enumerate(ids.tolist()):
        users[user_id].entitled = float(totals[position])
    for lead in leads.tolist():
        users[int(stay_owner[lead])].longest = (float(stay_start[lead]), float(stay_stop[lead]))
    return users


def _water_fill(
    doubtful: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    jobs: np.ndarray,
    weight: np.ndarray,
    ratio: np.ndarray,
    level: np.ndarray,
    seconds: np.ndarray,
    theta: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """theta over every segment (water-filled where `doubtful`), and for each stretch
    [low, high) the device seconds its capped segments add beyond w_u * theta * dt:
    sum of (n_u - theta w_u) dt. See `_sweep_pool`."""
    chosen = np.flatnonzero(doubtful)
    rank = np.concatenate(([0], np.cumsum(doubtful)))
    first, last = rank[low], rank[high]
    counts = last - first
    # One row per (doubtful segment, stretch over it): each stretch spans a run of them.
    rows = np.repeat(np.arange(len(low)), counts)
    offsets = np.repeat(first - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    segment = np.arange(len(rows)) + offsets  # the doubtful segment's rank
    order = np.lexsort((ratio[rows], segment))
    rows, segment = rows[order], segment[order]
    row_jobs, row_weight = jobs[rows].astype(float), weight[rows]
    heads = np.flatnonzero(np.append(True, segment[1:] != segment[:-1]))
    span = np.diff(np.append(heads, len(rows)))
    demand = np.add.reduceat(row_jobs, heads)
    total_weight = np.add.reduceat(row_weight, heads)
    # Before each row: the jobs and weight of the rows ahead of it in its segment.
    jobs_ahead = (
        np.cumsum(row_jobs)
        - row_jobs
        - np.repeat(np.cumsum(row_jobs)[heads] - row_jobs[heads], span)
    )
    weight_ahead = (
        np.cumsum(row_weight)
        - row_weight
        - np.repeat(np.cumsum(row_weight)[heads] - row_weight[heads], span)
    )
    service = np.minimum(level[chosen], demand)  # as the reference: at most the demand
    remaining = np.repeat(service, span) - jobs_ahead
    weight_left = np.repeat(total_weight, span) - weight_ahead
    fits = row_jobs * weight_left <= remaining * row_weight
    # The first row that does not fit ends the segment's capped prefix.
    position = np.arange(len(rows))
    stop = np.minimum.reduceat(np.where(fits, len(rows), position), heads)
    capped = position < np.repeat(stop, span)
    filled = np.zeros(len(heads))
    open_ = stop < len(rows)
    at_stop = stop[open_]
    filled[open_] = np.divide(
        remaining[at_stop],
        weight_left[at_stop],
        out=np.zeros(len(at_stop)),
        where=weight_left[at_stop] > 0,
    )
    theta = theta.copy()
    theta[chosen] = filled
    own = (row_jobs - np.repeat(filled, span) * row_weight) * seconds[chosen][segment]
    extra = np.bincount(rows[capped], own[capped], len(low))
    return theta, extra


# The exact largest normalised gap starts from this many users who received most over
# their weight within their longest stay, each against everyone (`_max_normalised_gap`).
_GAP_SEED_USERS = 8


def _max_normalised_gap(
    users: dict[int, _Waiting],
    names: dict[int, str],
    longest_job: float,
    service: _Service,
) -> NormalisedGap | None:
    """The largest |R_i/w_i - R_j/w_j| over the common part of two users' longest stays
    in the system, over every pair of the pool's users (of equal gaps, the pair first in
    user id order), with the SFQ bound beside it.

    Exact without evaluating every pair: over the common part, R_i/w_i is at most what i
    received over weight within its whole stay (`within`), so the gap is at most the
    larger `within` of the two. The users of largest `within` against everyone give a
    gap G; only users whose `within` reaches G can be in a larger pair, and only those
    are paired with everyone too. S is known at a user's own stay ends, so a pair costs two
    searches. `service` is S of the users in id order."""
    if len(users) < 2:
        return None
    ids = np.array(sorted(users), dtype=np.int64)
    weight = np.array([users[pk].weight for pk in ids.tolist()])
    stay = np.array([users[pk].longest for pk in ids.tolist()], dtype=float).reshape(-1, 2)
    begins, ends = stay[:, 0], stay[:, 1]
    rank = np.arange(len(ids))
    at_begin, at_end = service(rank, begins) / weight, service(rank, ends) / weight
    within = at_end - at_begin

    def gaps(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low, high = np.maximum(begins[i], begins[j]), np.minimum(ends[i], ends[j])
        moved = []
        for who in (i, j):
            at_low = np.where(low == begins[who], at_begin[who], 0.0)
            at_high = np.where(high == ends[who], at_end[who], 0.0)
            searched_low = low != begins[who]
            searched_high = high != ends[who]
            at_low[searched_low] = (
                service(who[searched_low], low[searched_low]) / weight[who[searched_low]]
            )
            at_high[searched_high] = (
                service(who[searched_high], high[searched_high]) / weight[who[searched_high]]
            )
            moved.append(at_high - at_low)
        gap = np.where(high > low, np.abs(moved[0] - moved[1]), -np.inf)
        return gap, high - low

    def against_everyone(rows: np.ndarray, done: np.ndarray) -> tuple[np.ndarray, ...]:
        """The pairs (lower rank, higher rank) of `rows` with every user, each once and
        none with a user of `done` (already paired with everyone), with their gaps."""
        first = np.repeat(rows, len(ids))
        second = np.tile(rank, len(rows))
        in_rows = np.zeros(len(ids), bool)
        in_rows[rows] = True
        keep = (second != first) & ~done[second] & (~in_rows[second] | (second > first))
        first, second = first[keep], second[keep]
        first, second = np.minimum(first, second), np.maximum(first, second)
        return (first, second, *gaps(first, second))

    # The users who received most over weight within their stays, against everyone,
    # then everyone else whose `within` reaches the gap found.
    done = np.zeros(len(ids), bool)
    seeds = np.sort(np.argsort(-within, kind="stable")[:_GAP_SEED_USERS])
    found = [against_everyone(seeds, done)]
    done[seeds] = True
    seed_best = float(found[0][2].max(initial=-np.inf))
    reach = within >= seed_best - 1e-9 * (1.0 + abs(seed_best))
    found.append(against_everyone(np.flatnonzero(reach & ~done), done))
    first, second, gap, over = (np.concatenate(column) for column in zip(*found, strict=True))
    if not len(gap) or gap.max() == -np.inf:
        return None
    order = np.lexsort((second, first, -gap))
    best = order[0]
    i, j = int(first[best]), int(second[best])
    return {
        "users": [names[int(ids[i])], names[int(ids[j])]],
        "seconds": float(gap[best]),
        "over_seconds": float(over[best]),
        "bound_seconds": float(longest_job / weight[i] + longest_job / weight[j]),
    }


@dataclass
class _PairGap:
    """A user's worst pair (see `_pair_gaps`)."""

    partner: int
    seconds: float
    over_seconds: float
    bound: float


def _unfair_pair(pair: _PairGap | None, names: dict[int, str]) -> UnfairPair | None:
    if pair is None:
        return None
    return {
        "user": names[pair.partner],
        "gap_seconds": pair.seconds,
        "bound_seconds": pair.bound,
        "over_seconds": pair.over_seconds,
    }


def _queued_stretches(
    owner: np.ndarray, at: np.ndarray, moves: np.ndarray, end: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner, start, stop) of the maximal stretches in which a user has a job queued
    (in the system and not on a device), from the +1/-1 changes of that count; changes at
    one instant are summed first, so an instant's dip is no gap."""
    if not len(owner):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    at = np.clip(at, 0.0, end)
    order = np.lexsort((at, owner))
    owner, at, moves = owner[order], at[order], moves[order]
    distinct = np.append(True, (owner[1:] != owner[:-1]) | (at[1:] != at[:-1]))
    heads = np.flatnonzero(distinct)
    owner, at, moves = owner[heads], at[heads], np.add.reduceat(moves, heads)
    first = np.append(True, owner[1:] != owner[:-1])
    total = np.cumsum(moves)
    user_heads = np.flatnonzero(first)
    count = total - np.repeat(
        total[user_heads] - moves[user_heads], np.diff(np.append(user_heads, len(owner)))
    )
    last = np.append(owner[1:] != owner[:-1], True)
    stop = np.where(last, end, np.append(at[1:], end))
    waiting = (count > 0) & (stop > at)
    # A stretch opens where waiting starts (a new user, or after a change that was not).
    opens = waiting & (first | ~np.append(False, waiting[:-1]) | (np.append(0.0, stop[:-1]) < at))
    starts = np.flatnonzero(opens)
    if not len(starts):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    label = np.cumsum(opens) - 1
    label = label[waiting]
    return (
        owner[starts],
        at[starts],
        np.maximum.reduceat(
            stop[waiting], np.flatnonzero(np.append(True, label[1:] != label[:-1]))
        ),
    )


def _pair_gaps(
    intervals: _PoolIntervals,
    queued: tuple[np.ndarray, np.ndarray],
    weights: dict[int, float],
    end: float,
    longest: float,
    slack: float,
    suspects: set[int] | None = None,
    shared: tuple[np.ndarray, _Service] | None = None,
) -> tuple[int, dict[int, _PairGap]]:
    """Each user's pair (u, v) whose normalised gap most exceeds `jobs.fairshare.pair_bound`
    over a stretch where both had a job queued: max D - min D over the stretch, D(t) =
    R_u(t)/w_u - R_v(t)/w_v (the reference is `jobs.fairshare.pairwise_gaps`), for the
    `suspects` (all users if None) whose worst pair, against any other user, exceeds it;
    nobody else is listed. Also returns the pool's devices as the bound counts them: the
    most runs at once (of two runs that end and begin at one instant, the end first).

    The dashboard passes as suspects only the users whose |lag| is beyond the lag bound
    (`jobs.fairshare.flagged_users`): in a fair run nobody or a few. Exact, and without
    pairing every suspect with every user: D(b) - D(a) lies in [-dR_v/w_v, dR_u/w_u], so a
    pair can exceed its bound only over a common stretch inside a *heavy* stretch of one
    of them (one within which it received more than the bound, over its weight), and
    long enough for its runs at once to deliver that (`_common_candidates`). Those common
    stretches are narrowed by figures of their excess from their ends, then from S on a
    coarse and a finer grid (`_grid_excess`), and the few left are evaluated at every run
    edge of the pair (`_pair_spreads`); all with arrays, no loop over pairs or jobs.
    `shared`: the users' ids and their `_Service`, when the caller has it already.
    """
    came = ~np.isnan(intervals.arrived) & (intervals.arrived < end)
    went = came & ~np.isnan(intervals.left) & (intervals.left < end)
    run_owner, run_start, run_stop = intervals.runs(end)
    run_start, run_stop = np.clip(run_start, 0.0, end), np.clip(run_stop, 0.0, end)
    stopped = run_stop < end
    queued_owner, queued_at = queued
    owner = np.concatenate(
        (intervals.owner[came], intervals.owner[went], queued_owner, run_owner, run_owner[stopped])
    ).astype(np.int64)
    at = np.concatenate(
        (intervals.arrived[came], intervals.left[went], queued_at, run_start, run_stop[stopped])
    )
    moves = np.concatenate(
        (
            np.ones(int(came.sum())),
            -np.ones(int(went.sum())),
            np.ones(len(queued_at)),
            -np.ones(len(run_start)),
            np.ones(int(stopped.sum())),
        )
    ).astype(np.int64)
    # The devices: the most runs at once, of an end and a start at one instant the end first.
    edges = np.concatenate((run_start, run_stop[stopped]))
    steps = np.concatenate((np.ones(len(run_start)), -np.ones(int(stopped.sum()))))
    level = np.cumsum(steps[np.lexsort((steps, edges))])
    devices = max(1, int(level.max(initial=0)))
    found: dict[int, _PairGap] = {}
    if suspects is not None and not suspects:
        return devices, found
    stretch_owner, stretch_start, stretch_stop = _queued_stretches(owner, at, moves, end)
    if len(np.unique(stretch_owner)) < 2:
        return devices, found
    # S of every user (the caller's, with its users' ids, when it has every one waiting).
    if shared is None or not np.isin(stretch_owner, shared[0]).all():
        ids = np.unique(stretch_owner)
        service = _service_by_user((run_owner, run_start, run_stop), ids, end)
    else:
        ids, service = shared
    waiting = ids.tolist()
    weight = np.array([weights[user_id] for user_id in waiting])
    # The most u received (over w_u) within one of its stretches: D moves by no more.
    stretch_rank = np.searchsorted(ids, stretch_owner)
    at_start = service(stretch_rank, stretch_start)
    at_stop = service(stretch_rank, stretch_stop)
    within = (at_stop - at_start) / weight[stretch_rank]
    # The most u can gain on anyone over an interval inside one of its stretches (D moves
    # by at most dS_u/w_u, and dS_u <= the length times u's most runs at once).
    rate = np.zeros(len(ids))
    np.maximum.at(rate, service.edge_rank, service.slope.astype(float))
    rate /= weight
    if suspects is None:
        suspect = np.ones(len(ids), bool)
    else:
        suspect = np.isin(ids, np.array(sorted(suspects), dtype=np.int64))
    candidates = _common_candidates(
        (stretch_rank, stretch_start, stretch_stop, within),
        rate,
        weight,
        suspect,
        (devices, longest, slack),
    )
    if candidates is None:
        return devices, found
    first, second, bound, spread, over = _pair_spreads(
        candidates, suspect, (stretch_start, stretch_stop, at_start, at_stop), service, weight
    )
    # Pairs in (first, second) order, first < second, as `jobs.fairshare.pairwise_gaps`
    # visits them: of two pairs exceeding by the same amount, the first is kept.
    for index in np.flatnonzero(spread > bound).tolist():
        u, v, limit = waiting[first[index]], waiting[second[index]], float(bound[index])
        gap = float(spread[index])
        for user_id, partner in ((u, v), (v, u)):
            if suspects is not None and user_id not in suspects:
                continue
            known = found.get(user_id)
            if known is None or gap - limit > known.seconds - known.bound:
                found[user_id] = _PairGap(partner, gap, float(over[index]), limit)
    return devices, found


# Candidate stretches are paired in blocks of about this many (heavy x long) cells.
_BLOCK_CELLS = 1 << 22


def _common_candidates(
    stretches: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    rate: np.ndarray,
    weight: np.ndarray,
    wanted: np.ndarray,
    scale: tuple[int, float, float],
) -> tuple[np.ndarray, ...] | None:
    """The common stretches (u, v, u's stretch, v's stretch, low, high, bound; u < v) of
    two users, one of them `wanted`, over which D can move by more than the pair's bound,
    found without pairing every user with every other.

    Over an interval inside a common stretch D moves by at most max(dS_u/w_u, dS_v/w_v),
    and dS_u/w_u is at most both u's own stretch's `within` and the interval's length
    times `rate` (u's most runs at once over w_u). So one of the two stretches must be
    *heavy* (its `within` beyond the least bound its owner can have with anyone) and
    the common part longer than that least bound over its owner's rate: only heavy
    stretches are paired, with the stretches of other users long enough, in blocks."""
    rank, start, stop, within = stretches
    devices, longest, slack = scale
    tolerance = 1e-9
    # As `jobs.fairshare.pair_bound` computes it, to the last bit.
    least_bound = devices * (longest / weight + longest / weight.max()) + slack
    floor = least_bound[rank] * (1 - tolerance) - tolerance
    heavy = np.flatnonzero((within > floor) & (rate[rank] > 0))
    if not len(heavy):
        return None
    shortest = floor[heavy] / rate[rank[heavy]]  # the least common length that can count
    longish = np.flatnonzero(stop - start > shortest.min())
    step = max(1, _BLOCK_CELLS // max(1, len(longish)))
    found_h: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    for block in range(0, len(heavy), step):
        h = heavy[block : block + step]
        common = np.minimum(stop[h][:, None], stop[longish][None, :]) - np.maximum(
            start[h][:, None], start[longish][None, :]
        )
        near = (common > np.maximum(shortest[block : block + step], 0.0)[:, None]) & (
            rank[h][:, None] != rank[longish][None, :]
        )
        rows, columns = np.nonzero(near)
        found_h.append(h[rows])
        found_s.append(longish[columns])
    of_h, of_s = np.concatenate(found_h), np.concatenate(found_s)
    # A pair of two heavy stretches long enough is found from both: kept from the first.
    common = np.minimum(stop[of_h], stop[of_s]) - np.maximum(start[of_h], start[of_s])
    place = np.full(len(rank), -1)
    place[heavy] = np.arange(len(heavy))
    twice = (place[of_s] >= 0) & (common > np.maximum(shortest[np.maximum(place[of_s], 0)], 0.0))
    once = ~twice | (of_h < of_s)
    of_h, of_s = of_h[once], of_s[once]
    u_first = rank[of_h] < rank[of_s]
    of_u, of_v = np.where(u_first, of_h, of_s), np.where(u_first, of_s, of_h)
    u, v = rank[of_u], rank[of_v]
    low = np.maximum(start[of_u], start[of_v])
    high = np.minimum(stop[of_u], stop[of_v])
    bound = devices * (longest / weight[u] + longest / weight[v]) + slack
    length = high - low
    upper = np.maximum(
        np.minimum(within[of_u], length * rate[u]), np.minimum(within[of_v], length * rate[v])
    )
    keep = (wanted[u] | wanted[v]) & (upper >= bound * (1 - tolerance) - tolerance)
    if not keep.any():
        return None
    return tuple(array[keep] for array in (u, v, of_u, of_v, low, high, bound))


def _ranges(first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """first[k], first[k] + 1, ..., first[k] + counts[k] - 1 for every k, concatenated."""
    total = int(counts.sum())
    starts = np.repeat(first - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return starts + np.arange(total)


@dataclass
class _Service:
    """S(rank, t): the device seconds the user of rank `rank` (into the users' ids)
    received from the window's start to t, for arrays of both. S is linear between the
    user's run edges, so it is kept at each edge (`at_edge`) with its slope after it (the
    user's runs on a device there), and S(t) is one search for the last edge by t, of the
    key rank * (end + 1) + time in the edges sorted by user, then time (`edge_key`)."""

    scale: float
    edge_rank: np.ndarray
    edge_at: np.ndarray
    edge_key: np.ndarray
    at_edge: np.ndarray
    slope: np.ndarray

    def __call__(self, who: np.ndarray, at: np.ndarray) -> np.ndarray:
        last = np.searchsorted(self.edge_key, who * self.scale + at, side="right") - 1
        return self.at_edge[last] + self.slope[last] * (at - self.edge_at[last])


def _service_by_user(
    runs: tuple[np.ndarray, np.ndarray, np.ndarray], ids: np.ndarray, end: float
) -> _Service:
    """The device time each user (of rank into `ids`) received by any time (`_Service`)."""
    scale = end + 1.0
    owned = np.isin(runs[0], ids)
    rank = np.searchsorted(ids, runs[0][owned])
    run_start, run_stop = runs[1][owned], runs[2][owned]
    by_start = np.lexsort((run_start, rank))
    start_key = rank[by_start] * scale + run_start[by_start]
    start_sums = np.concatenate(([0.0], np.cumsum(run_start[by_start])))
    by_stop = np.lexsort((run_stop, rank))
    stop_key = rank[by_stop] * scale + run_stop[by_stop]
    stop_sums = np.concatenate(([0.0], np.cumsum(run_stop[by_stop])))
    run_offset = np.searchsorted(np.sort(rank), np.arange(len(ids) + 1))
    # Each user's edges open with one before the window (S = 0 there), so the last edge
    # by any time in the window is always the user's own.
    edge_rank = np.concatenate((np.arange(len(ids)), rank, rank))
    edge_at = np.concatenate((np.full(len(ids), -0.5), run_start, run_stop))
    by_edge = np.lexsort((edge_at, edge_rank))
    edge_rank, edge_at = edge_rank[by_edge], edge_at[by_edge]
    edge_key = edge_rank * scale + edge_at
    # At each edge: the runs begun minus those ended by then (the slope after it), and S
    # as the sum of (t - start) over the runs begun minus (t - stop) over those ended.
    begun = np.searchsorted(start_key, edge_key, side="right")
    done = np.searchsorted(stop_key, edge_key, side="right")
    base = run_offset[edge_rank]
    slope = begun - done
    at_edge = (
        slope * edge_at
        - (start_sums[begun] - start_sums[base])
        + (stop_sums[done] - stop_sums[base])
    )
    return _Service(scale, edge_rank, edge_at, edge_key, at_edge, slope)


def _pair_spreads(
    candidates: tuple[np.ndarray, ...],
    wanted: np.ndarray,
    stretches: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    service: _Service,
    weight: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """The pairs (first, second) of user ranks (into `ids`) among the common stretches
    of `_common_candidates`, each with its bound, the largest max D - min D over those
    stretches and that stretch's length (of equal spreads, the longest), all at once,
    exact wherever it can be the worst pair of a `wanted` user that exceeds its bound
    (elsewhere it may be less). D = S_u/w_u - S_v/w_v, S the device time received since
    the window's start, evaluated at each common stretch's ends and at every run boundary
    of u or v inside it (D is linear in between).

    Pruned first by each common stretch's ends alone: its spread lies between
    |dS_u/w_u - dS_v/w_v| and max(dS_u/w_u, dS_v/w_v), so a stretch whose upper figure
    is within the bound, or below the lower figure another stretch already gives every
    wanted user of the pair, cannot be that worst pair and is not evaluated point by
    point. Per-user arrays are found by searching a key rank * (end + 1) + time, sorted by
    user, then time."""
    u, v, of_u, of_v, low, high, _ = candidates
    stretch_start, stretch_stop, at_start, at_stop = stretches
    users = len(weight)
    scale = service.scale
    pair_key, pair = np.unique(u * users + v, return_inverse=True)
    first, second = pair_key // users, pair_key % users
    bound = np.zeros(len(pair_key))
    bound[pair] = candidates[6]
    spread = np.zeros(len(first))
    over = np.zeros(len(first))
    # Each common stretch's excess lies in [lower, upper] (from its ends alone); keep
    # those whose upper can beat the best lower of a wanted user of the pair. Each end is
    # one of the two users' own stretch ends, where S is known: only the other's is
    # searched.
    ends = []
    for at, own_at, known in ((low, stretch_start, at_start), (high, stretch_stop, at_stop)):
        of_u_end = at == own_at[of_u]
        other = service(np.where(of_u_end, v, u), at)
        ends.append(
            (np.where(of_u_end, known[of_u], other), np.where(of_u_end, other, known[of_v]))
        )
    (u_low, v_low), (u_high, v_high) = ends
    moved_u = (u_high - u_low) / weight[u]
    moved_v = (v_high - v_low) / weight[v]
    upper = np.maximum(moved_u, moved_v) - bound[pair]
    lower = np.abs(moved_u - moved_v) - bound[pair]
    keep = _may_hold_the_worst(u, v, lower, upper, wanted, users)
    pair, low, high, u, v = pair[keep], low[keep], high[keep], u[keep], v[keep]
    if not len(pair):
        return first, second, bound, spread, over
    # Then by grids, coarse, then finer: D at the grid's times inside each stretch (and
    # its ends) gives a lower figure; between two of them S_u and S_v only grow, so D
    # lies between S_u(a)/w_u - S_v(b)/w_v and S_u(b)/w_u - S_v(a)/w_v: an upper one.
    at_ends: tuple[np.ndarray, ...] = (u_low[keep], u_high[keep], v_low[keep], v_high[keep])
    for blocks in _GRID_BLOCKS:
        lower, upper = _grid_excess(
            (u, v, low, high, bound[pair]), at_ends, service, weight, blocks
        )
        keep = _may_hold_the_worst(u, v, lower, upper, wanted, users)
        pair, low, high, u, v = pair[keep], low[keep], high[keep], u[keep], v[keep]
        at_ends = tuple(value[keep] for value in at_ends)
        if not len(pair):
            return first, second, bound, spread, over
    # The points of each common stretch: its ends, then u's and v's run edges inside (at
    # its own edge a user's S is known; only the other's is searched).
    pieces = np.arange(len(pair))
    points_lead = [service(u, at) / weight[u] - service(v, at) / weight[v] for at in (low, high)]
    points_piece = [pieces, pieces]
    for who, other, sign in ((u, v, 1.0), (v, u, -1.0)):
        lo = np.searchsorted(service.edge_key, who * scale + low, side="left")
        hi = np.searchsorted(service.edge_key, who * scale + high, side="right")
        counts = hi - lo
        edge = _ranges(lo, counts)
        of = np.repeat(pieces, counts)
        own = service.at_edge[edge] / weight[who[of]]
        theirs = service(other[of], service.edge_at[edge]) / weight[other[of]]
        points_lead.append(own - theirs if sign > 0 else theirs - own)
        points_piece.append(of)
    lead = np.concatenate(points_lead)
    piece = np.concatenate(points_piece)
    order = np.argsort(piece, kind="stable")
    piece, lead = piece[order], lead[order]
    heads = np.flatnonzero(np.append(True, piece[1:] != piece[:-1]))
    piece_spread = np.maximum.reduceat(lead, heads) - np.minimum.reduceat(lead, heads)
    # Each pair's widest piece (of equal ones the longest, as the reference picks).
    best = np.lexsort((-(high - low), -piece_spread, pair))
    leads = best[np.append(True, pair[best][1:] != pair[best][:-1])]
    spread[pair[leads]] = piece_spread[leads]
    over[pair[leads]] = (high - low)[leads]
    return first, second, bound, spread, over


# The grids of `_grid_excess`, coarse, then finer: this many blocks over the window.
_GRID_BLOCKS = (16, 128)
# Stretches are compared on a grid in chunks of this many.
_GRID_CHUNK = 1 << 14


def _may_hold_the_worst(
    u: np.ndarray,
    v: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    wanted: np.ndarray,
    users: int,
) -> np.ndarray:
    """Which common stretches stay candidates: over the bound at most (`upper > 0`) and
    not beaten, for both their users, by another stretch's certain excess (`lower`);
    a user not `wanted` keeps none of its own."""
    best = np.full(users, -np.inf)
    np.maximum.at(best, u, lower)
    np.maximum.at(best, v, lower)
    best[~wanted] = np.inf
    tolerance = 1e-9 * (1.0 + np.abs(upper))
    return (upper > 0) & ((upper + tolerance >= best[u]) | (upper + tolerance >= best[v]))


def _grid_excess(
    pieces: tuple[np.ndarray, ...],
    ends: tuple[np.ndarray, ...],
    service: _Service,
    weight: np.ndarray,
    blocks: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A lower and an upper figure of each common stretch's excess (max D - min D minus
    the bound) from S at `blocks` + 1 times over the window (one search per user and
    time, not per stretch): the grid's times clipped to the stretch, so the first and
    last are its ends (`ends`: S_u and S_v at its start, then at its end, known). As S
    only grows, S at a clipped time is S at the grid time clipped to S at the ends."""
    u, v, low, high, bound = pieces
    grid = np.linspace(0.0, service.scale - 1.0, blocks + 1)
    present = np.zeros(len(weight), bool)
    present[u] = present[v] = True
    users = np.flatnonzero(present)
    row = np.cumsum(present) - 1
    at_grid = (
        service(np.repeat(users, len(grid)), np.tile(grid, len(users))).reshape(
            len(users), len(grid)
        )
        / weight[users][:, None]
    )
    lower = np.empty(len(u))
    upper = np.empty(len(u))
    for chunk in range(0, len(u), _GRID_CHUNK):
        part = slice(chunk, chunk + _GRID_CHUNK)
        clipped = []
        for who, at_low, at_high in ((u, ends[0], ends[1]), (v, ends[2], ends[3])):
            values = at_grid[row[who[part]]]
            # np.minimum/np.maximum in place: np.clip is several times slower here.
            np.maximum(values, (at_low[part] / weight[who[part]])[:, None], out=values)
            np.minimum(values, (at_high[part] / weight[who[part]])[:, None], out=values)
            clipped.append(values)
        x_u, x_v = clipped
        lead = x_u - x_v
        lower[part] = lead.max(axis=1) - lead.min(axis=1)
        upper[part] = (x_u[:, 1:] - x_v[:, :-1]).max(axis=1) - (x_u[:, :-1] - x_v[:, 1:]).min(
            axis=1
        )
    return lower - bound, upper - bound


def jain_index(rows: list[UserShare], floor: float = JAIN_FLOOR_SECONDS) -> float | None:
    """Jain's index of x_u = R_u / E_u over the users entitled to more than `floor`
    seconds (1 = everyone received what the fluid schedule entitled them to)."""
    ratios = [
        row["received_seconds"] / row["entitled_seconds"]
        for row in rows
        if row["entitled_seconds"] > floor
    ]
    squares = sum(x * x for x in ratios)
    if not squares:
        return None
    return sum(ratios) ** 2 / (len(ratios) * squares)


@dataclass
class _PoolIntervals:
    """One pool's rows of `_intervals_sql`, as arrays (NaN for NULL)."""

    owner: np.ndarray
    arrived: np.ndarray  # NaN: a requeued attempt (a run only)
    started: np.ndarray  # NaN: never ran
    left: np.ndarray  # NaN: still running

    def runs(self, end: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(owner, start, stop) of every run that began before the end; a running one
        stops at the end."""
        ran = ~np.isnan(self.started) & (self.started < end)
        stops = np.where(np.isnan(self.left), end, self.left)
        return self.owner[ran], self.started[ran], stops[ran]


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[np.ndarray]:
    """The rows' columns as arrays: the first (the pool) as objects, the second (the
    owner) as integers, the rest as floats (NULL as NaN). One object array first: faster
    than an array per column from zip()."""
    if not rows:
        return [np.zeros(0, dtype=object), np.zeros(0, np.int64)] + [np.zeros(0)] * (width - 2)
    table = np.array(rows, dtype=object)
    numbers = table[:, 2:].astype(float)
    return [table[:, 0], table[:, 1].astype(np.int64)] + [numbers[:, i] for i in range(width - 2)]


def _job_counts(
    owner: np.ndarray, at: np.ndarray, moves: np.ndarray, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner, at, min(n_u, cap)) after each of the users' arrivals (+1) and leaves (-1),
    sorted by user and time."""
    order = np.lexsort((at, owner))
    owner, at, moves = owner[order], at[order], moves[order]
    heads = np.flatnonzero(np.append(True, owner[1:] != owner[:-1]))
    total = np.cumsum(moves)
    before = np.repeat(total[heads] - moves[heads], np.diff(np.append(heads, len(owner))))
    return owner, at, np.minimum(total - before, cap)


def _among(ids: set[int]) -> RawSQL:
    """A subquery of the integers `ids` as one text parameter (an array literal on
    PostgreSQL, JSON on SQLite): a thousand users' ids as `IN (%s, %s, ...)` cost more to
    bind than to query, and so does a list, which the driver adapts value by value."""
    if connection.vendor == "postgresql":
        literal = "{" + ",".join(str(int(pk)) for pk in sorted(ids)) + "}"
        return RawSQL("SELECT unnest(%s::bigint[])", [literal])
    return RawSQL("SELECT value FROM json_each(%s)", [json.dumps(sorted(ids))])


def _fetch_queued(params: dict[str, Any], t0: datetime) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each pool's rows of `_queued_sql` as arrays: (owner, arrived)."""
    with connection.cursor() as cursor:
        cursor.execute(_queued_sql(), params)
        rows = cursor.fetchall()
    if connection.vendor == "postgresql":
        return {
            pool: (_binary_int8(owners), _binary_seconds(arrived, t0))
            for pool, owners, arrived in rows
        }
    queued: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    queued_pool, queued_owner, queued_at = _columns(rows, 3)
    for pool in sorted(set(queued_pool.tolist())):
        mine = queued_pool == pool
        queued[pool] = (queued_owner[mine], queued_at[mine])
    return queued


def pool_fairness(now: datetime | None = None) -> list[PoolFairness]:
    """Each pool's users measured against the fluid fair schedule over the window (see
    the module docstring): one query for the window's job intervals (`_intervals_sql`),
    one for the backlog's first arrivals (`_queued_sql`), one for the users and one for
    their queue counters; the rest is array arithmetic (`_sweep_pool`)."""
    now = now or timezone.now()
    end = WINDOW.total_seconds()
    adapt = connection.ops.adapt_datetimefield_value
    params: dict[str, Any] = {"t0": adapt(now - WINDOW), "t1": adapt(now)}
    pools = _fetch_intervals(params, now - WINDOW)
    busy: dict[str, _Busy] = {}
    for pool, intervals in pools.items():
        _, starts, stops = intervals.runs(end)
        ended = stops < end
        busy[pool] = _Busy.from_arrays(
            np.concatenate((starts, stops[ended])),
            np.concatenate((np.ones(len(starts), np.int64), -np.ones(int(ended.sum()), np.int64))),
            end,
        )
    caps = {pool: max(1, timeline.most) for pool, timeline in busy.items()}
    queued = _fetch_queued({**params, "cap": max(caps.values(), default=1)}, now - WINDOW)
    changes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for pool in sorted(set(pools) | set(queued)):
        intervals = pools.get(pool, _PoolIntervals(*(np.zeros(0),) * 4))
        came = ~np.isnan(intervals.arrived) & (intervals.arrived < end)
        went = came & ~np.isnan(intervals.left)
        queued_owner, queued_at = queued.get(pool, (np.zeros(0, np.int64), np.zeros(0)))
        changes[pool] = _job_counts(
            np.concatenate((intervals.owner[came], intervals.owner[went], queued_owner)).astype(
                np.int64
            ),
            np.concatenate((intervals.arrived[came], intervals.left[went], queued_at)),
            np.concatenate(
                (np.ones(int(came.sum())), -np.ones(int(went.sum())), np.ones(len(queued_at)))
            ).astype(np.int64),
            caps.get(pool, 1),
        )
    everyone = [owners for owners, _, _ in changes.values()]
    user_ids = set(np.unique(np.concatenate(everyone)).tolist()) if everyone else set()
    users = {
        pk: (username, weight, oldest)
        for pk, username, weight, oldest in User.objects.filter(pk__in=_among(user_ids))
        .annotate(oldest_queued=_oldest_queued_created_at())
        .values_list("pk", "username", "weight", "oldest_queued")
    }
    backlog = {
        (pool, user_id): (queued_count, running)
        for pool, user_id, queued_count, running in FairShareAccount.objects.filter(
            user_id__in=_among(user_ids)
        ).values_list("pool__device_type", "user_id", "queued_count", "running_count")
    }
    weights = {pk: weight for pk, (_, weight, _) in users.items()}
    names = {pk: username for pk, (username, _, _) in users.items()}
    result: list[PoolFairness] = []
    for pool in sorted(changes):
        intervals = pools.get(pool, _PoolIntervals(*(np.zeros(0),) * 4))
        swept = _sweep_pool(changes[pool], busy.get(pool, _Busy()), weights, end)
        run_owner, run_start, run_stop = intervals.runs(end)
        inside = np.minimum(run_stop, end) - np.maximum(run_start, 0.0)
        ids, index = np.unique(run_owner, return_inverse=True)
        received = dict(
            zip(ids.tolist(), np.bincount(index, inside, len(ids)).tolist(), strict=True)
        )
        longest = max(0.0, float((run_stop - run_start).max(initial=0.0)))
        for pk, state in swept.items():
            state.received = received.get(pk, 0.0)
        bound = lag_bound(longest, settings.ZYPHER_DASHBOARD_LAG_SLACK_SECONDS)
        # S, each user's device time by any time, for the pair check and the largest gap.
        ids = np.array(sorted(swept), dtype=np.int64)
        service = _service_by_user(
            (run_owner, np.clip(run_start, 0.0, end), np.clip(run_stop, 0.0, end)), ids, end
        )
        # Flagged: the lag beyond its bound and the pairwise guarantee broken (see the
        # module docstring); the pair check runs only for users past the first test.
        devices, pairs = _pair_gaps(
            intervals,
            queued.get(pool, (np.zeros(0, np.int64), np.zeros(0))),
            weights,
            end,
            longest,
            settings.ZYPHER_DASHBOARD_LAG_SLACK_SECONDS,
            suspects={
                pk for pk, state in swept.items() if abs(state.entitled - state.received) > bound
            },
            shared=(ids, service),
        )
        device_seconds = sum(state.received for state in swept.values())
        shares_of_pool: list[UserShare] = []
        for pk, state in swept.items():
            lag = state.entitled - state.received
            queued_count, running = backlog.get((pool, pk), (0, 0))
            shares_of_pool.append(
                {
                    "pool": pool,
                    "user": names[pk],
                    "user_pk": pk,
                    "weight": weights[pk],
                    "received_seconds": state.received,
                    "entitled_seconds": state.entitled,
                    "lag_seconds": lag,
                    "received_share": state.received / device_seconds if device_seconds else 0.0,
                    "entitled_share": state.entitled / device_seconds if device_seconds else 0.0,
                    "oldest_queued_age_seconds": _age(now, users[pk][2]),
                    "queued": queued_count,
                    "running": running,
                    "flagged": pk in pairs,
                    "unfair_pair": _unfair_pair(pairs.get(pk), names),
                }
            )
        shares_of_pool.sort(key=lambda row: (-row["lag_seconds"], row["user"]))
        result.append(
            {
                "pool": pool,
                "device_seconds": device_seconds,
                "longest_job_seconds": longest,
                "lag_bound_seconds": bound,
                "devices": devices,
                "jain_index": jain_index(shares_of_pool),
                "max_normalised_gap": _max_normalised_gap(
                    swept,
                    names,
                    longest,
                    service,
                ),
                "shares": shares_of_pool,
            }
        )
    return result


def shares(now: datetime | None = None) -> list[UserShare]:
    """Every user in the system during the window, per pool, most owed first within a
    pool (`pool_fairness` without the pools' summaries)."""
    return [row for pool in pool_fairness(now) for row in pool["shares"]]


def _seconds_between_sql(later: str, earlier: str) -> str:
    if connection.vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM ({later} - {earlier}))"
    return f"((julianday({later}) - julianday({earlier})) * 86400.0)"


def idle_gaps(now: datetime | None = None) -> IdleGap:
    """Histogram of the idle gap on each device: from one job's end to the next job's start
    on the same device, for jobs that ended in the window (LAG over the window's jobs,
    then bucketed in SQL: one query, a handful of rows back). On SQLite the gap is a
    difference of `julianday()` values, exact to about 0.1 ms."""
    now = now or timezone.now()
    table = Job._meta.db_table
    gap = _seconds_between_sql("started_at", "previous_finished_at")
    buckets = " ".join(
        f"WHEN gap < {edge!r} THEN {index}" for index, edge in enumerate(IDLE_GAP_EDGES)
    )
    sql = f"""
        WITH ordered AS (
            SELECT started_at,
                   LAG(finished_at) OVER (PARTITION BY device ORDER BY started_at, id)
                       AS previous_finished_at
            FROM {table}
            WHERE finished_at > %s AND finished_at <= %s
              AND started_at IS NOT NULL AND device <> ''
        ), gaps AS (
            SELECT {gap} AS gap FROM ordered WHERE previous_finished_at IS NOT NULL
        )
        SELECT CASE {buckets} ELSE {len(IDLE_GAP_EDGES)} END AS bucket, COUNT(*), SUM(gap)
        FROM gaps
        GROUP BY 1
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, _window_params(now))
        rows = cursor.fetchall()
    counts = [0] * (len(IDLE_GAP_EDGES) + 1)
    total_gap = 0.0
    for bucket, count, gap_sum in rows:
        counts[int(bucket)] = count
        total_gap += float(gap_sum or 0.0)
    total = sum(counts)
    return {
        "edges": list(IDLE_GAP_EDGES),
        "counts": counts,
        "total": total,
        "mean_seconds": total_gap / total if total else None,
    }


def fairness(pools: list[PoolFairness] | None = None, now: datetime | None = None) -> Fairness:
    now = now or timezone.now()
    if pools is None:
        pools = pool_fairness(now)
    rows = [row for pool in pools for row in pool["shares"]]
    return {
        "window_seconds": WINDOW.total_seconds(),
        "device_seconds": sum(row["received_seconds"] for row in rows),
        "jain_index": jain_index(rows),
        "pools": [
            PoolSummary(**{key: value for key, value in pool.items() if key != "shares"})  # type: ignore[typeddict-item]
            for pool in pools
        ],
        "oldest_queued_age_seconds": oldest_queued_age(now),
        "idle_gap": idle_gaps(now),
    }


# --- the queue's own health ----------------------------------------------------------------------


class QueueRepairs(TypedDict):
    last_hour: int
    latest: list[dict[str, str]]


def queue_repairs_by_kind() -> dict[str, int]:
    """Repairs of drifted bookkeeping ever made, by invariant (`jobs.invariants`)."""
    rows = QueueRepair.objects.values_list("kind").annotate(n=Count("id")).order_by("kind")
    return dict(rows)


def queue_repairs(now: datetime | None = None, latest: int = 5) -> QueueRepairs:
    """Repairs in the last hour and the latest few: drift seen, not guessed."""
    now = now or timezone.now()
    recent = QueueRepair.objects.filter(repaired_at__gte=now - timedelta(hours=1))
    return {
        "last_hour": recent.count(),
        "latest": [
            {
                "repaired_at": repair.repaired_at.isoformat(),
                "kind": repair.kind,
                "subject": repair.subject,
                "detail": repair.detail,
                "repaired_by": repair.repaired_by,
            }
            for repair in QueueRepair.objects.order_by("-repaired_at")[:latest]
        ],
    }


# --- jobs that no registered device can run ------------------------------------------------


class WaitingForDevice(TypedDict):
    pool: str
    jobs: int  # queued jobs of the pool that no registered device can run
    users: int
    largest_job_size: int | None
    largest_device_size: int | None  # None: no device of the pool is registered
    reason: str


def waiting_for_a_device() -> list[WaitingForDevice]:
    """Per pool, the queued jobs no registered device can run (`jobs.queue.wait_reason`):
    claims pass them over without holding anyone up, and the page says why they wait.
    Pools come from the backlogged accounts, not from a scan of the jobs."""
    from jobs import queue

    provider = queue._pool_capacity_provider
    if provider is None:
        return []
    pools = (
        FairShareAccount.objects.filter(queued_count__gt=0)
        .values_list("pool__device_type")
        .annotate(queued=Sum("queued_count"), users=Count("id"))
        .order_by("pool__device_type")
    )
    found: list[WaitingForDevice] = []
    for pool, queued, users in pools:
        devices, largest = provider(pool)
        if devices == 0:
            found.append(
                {
                    "pool": pool,
                    "jobs": queued,
                    "users": users,
                    "largest_job_size": None,
                    "largest_device_size": None,
                    "reason": f"no device of pool {pool!r} is registered",
                }
            )
        elif largest is not None:
            too_big = Job.objects.filter(
                status=JobStatus.QUEUED, device_type=pool, size__gt=largest
            ).aggregate(jobs=Count("id"), users=Count("owner", distinct=True), size=Max("size"))
            if too_big["jobs"]:
                found.append(
                    {
                        "pool": pool,
                        "jobs": too_big["jobs"],
                        "users": too_big["users"],
                        "largest_job_size": too_big["size"],
                        "largest_device_size": largest,
                        "reason": f"larger than the largest registered device (size {largest})",
                    }
                )
    return found


# --- everything --------------------------------------------------------------------------------


# The page refreshes the two parts on their own clocks: "live" is the queue as it stands,
# a few index probes and counter sums, cheap at every refresh; "hour" is the last hour's
# history (throughput, service time, fairness, idle gaps), most of the cost, and changes
# little between two refreshes a few seconds apart.
STATS_PARTS = ("live", "hour")


def live_stats(now: datetime | None = None) -> dict[str, Any]:
    """The queue as it stands: depth, who waits, who holds each device, repairs."""
    now = now or timezone.now()
    return {
        "generated_at": now.isoformat(),
        "queue_depth": queue_depth(),
        "queued_by_user": queued_by_user(now=now),
        "oldest_queued_age_seconds": oldest_queued_age(now),
        "running": running_jobs(now),
        "devices": device_states(),
        "waiting_for_a_device": waiting_for_a_device(),
        "queue_repairs": queue_repairs(now),
    }


def hour_stats(now: datetime | None = None) -> dict[str, Any]:
    """The last hour: throughput, service time, each user's share against the fluid fair
    schedule, idle gaps."""
    now = now or timezone.now()
    pools = pool_fairness(now)
    return {
        "generated_at": now.isoformat(),
        "throughput": throughput(now),
        "service_time": service_time(now),
        "shares": [row for pool in pools for row in pool["shares"]],
        "fairness": fairness(pools, now),
    }


def dashboard_stats(now: datetime | None = None, part: str | None = None) -> dict[str, Any]:
    """The dashboard's figures, JSON-ready (what `GET /api/stats/` answers): one part of
    `STATS_PARTS`, or both when `part` is None."""
    now = now or timezone.now()
    if part == "live":
        return live_stats(now)
    if part == "hour":
        return hour_stats(now)
    if part is not None:
        raise ValueError(f"unknown part {part!r}")
    return {**live_stats(now), **hour_stats(now)}


__all__ = [
    "STATS_PARTS",
    "dashboard_stats",
    "device_states",
    "fairness",
    "hour_stats",
    "idle_gaps",
    "jain_index",
    "live_stats",
    "oldest_queued_age",
    "pool_fairness",
    "queue_depth",
    "queue_repairs",
    "queue_repairs_by_kind",
    "queued_by_user",
    "running_jobs",
    "service_time",
    "shares",
    "throughput",
    "waiting_for_a_device",
]
