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
    flagged  |L_u| > 2 * C_max + ZYPHER_DASHBOARD_LAG_SLACK_SECONDS, C_max = the pool's
             longest run in the window: beyond what the policy itself allows
             (`jobs.fairshare.lag_bound`) for users of one weight arriving with their
             work; unequal weights and sporadic users can exceed it (README)
    Jain's index  (sum x_u)^2 / (k * sum x_u^2), x_u = R_u / E_u, over the k users with
             E_u > JAIN_FLOOR_SECONDS (1 = everyone got what they were entitled to)
    max normalised gap  max |R_i/w_i - R_j/w_j| over the common part of two users'
             longest stretches in the system (the 20 most entitled users of the pool),
             beside the SFQ bound C_max/w_i + C_max/w_j for one device

No loop over jobs. One query (`_fluid_sql`, window functions on SQLite and PostgreSQL
alike) turns the window's job intervals into change points: the pool's busy devices per
instant, and when each user enters or leaves the system (the backlog through a hash
aggregate: only each user's first queued job counts); received time is summed there
too. One sweep per pool runs over the users' change points (`_sweep_pool`): while the
pool's largest m times the largest weight is at most W, nobody can be capped by its job
count and V advances by the device seconds delivered over W (`_sweep_present`: array
operations, no loop over the change points). Where that test fails (few
users beside many devices), a second query (`_counted_sql`) gives the exact job counts
up to the end of the last such stretch, clamped to the pool's largest m (which loses
nothing: phi_u <= m) so that only each user's first m queued jobs are ranked.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypedDict

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, Min, OuterRef, Q, Subquery, Sum
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
    flagged: bool


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
    lag_bound_seconds: float  # |lag| beyond this is flagged
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


def queue_depth() -> QueueDepth:
    """Queued jobs in all, per pool and per priority (one GROUP BY over the queued jobs,
    read from the partial index `job_queue_head`), and running jobs per pool."""
    rows = (
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


def _runs_sql() -> str:
    """CTEs `spans` (the window's ended jobs and the running ones: in the system from
    arrival to their end) and `runs` (their device time: each job row's own, last attempt,
    and the JobRun row of every requeued attempt)."""
    job, run = Job._meta.db_table, JobRun._meta.db_table
    arrived = "CASE WHEN started_at < created_at THEN started_at ELSE created_at END"
    return f"""
        spans AS (
            SELECT device_type AS pool, owner_id, {arrived} AS arrived, started_at,
                   finished_at AS left_at
            FROM {job} WHERE finished_at > %(t0)s AND finished_at <= %(t1)s
            UNION ALL
            SELECT device_type, owner_id, {arrived}, started_at, NULL
            FROM {job} WHERE status = 'running'
        ), runs AS (
            SELECT pool, owner_id, started_at AS run_start, left_at AS run_end
            FROM spans WHERE started_at IS NOT NULL AND started_at < %(t1)s
            UNION ALL
            SELECT device_type, owner_id, started_at, ended_at FROM {run}
            WHERE ended_at > %(t0)s AND started_at < %(t1)s
        )"""


def _fluid_sql() -> str:
    """The window's figures in as few rows as the fluid schedule needs, per pool (`kind`):

    0  (at, dm): how many jobs of the pool hold a device, changes summed per instant;
    1  (owner, at, 1 or 0): a user enters or leaves the system (n_u >= 1); of the queued
       jobs, which stay to the end of the window, only each user's first arrival counts
       (a hash aggregate: no sort of the backlog);
    2  (owner, received): device seconds of the user's runs inside the window;
    3  (longest): the pool's longest run.

    Where the sweep cannot rule out that a user is capped by its job count, it asks
    `_counted_sql` for the exact n_u over the start of the window.
    """
    job = Job._meta.db_table
    run_start, run_end = _seconds_sql("run_start"), _seconds_sql("run_end")
    window_end = "%(w)s"
    return f"""
        WITH {_runs_sql()}, busy AS (
            SELECT pool, at, CAST(SUM(dm) AS INTEGER) AS dm FROM (
                SELECT pool, run_start AS at, 1 AS dm FROM runs
                UNION ALL
                SELECT pool, run_end, -1 FROM runs WHERE run_end IS NOT NULL
            ) ends GROUP BY pool, at
        ), moves AS (
            SELECT pool, owner_id, arrived AS at, 1 AS dn FROM spans WHERE arrived < %(t1)s
            UNION ALL
            SELECT pool, owner_id, left_at, -1 FROM spans
            WHERE left_at IS NOT NULL AND arrived < %(t1)s
            UNION ALL
            SELECT device_type, owner_id, MIN(created_at), 1 FROM {job}
            WHERE status = 'queued' AND created_at < %(t1)s GROUP BY device_type, owner_id
        ), counted AS (
            SELECT pool, owner_id, at, dn, SUM(dn) OVER (PARTITION BY owner_id, pool ORDER BY at) AS n
            FROM (
                SELECT pool, owner_id, at, CAST(SUM(dn) AS INTEGER) AS dn
                FROM moves GROUP BY pool, owner_id, at
            ) grouped
        )
        SELECT 0, pool, NULL, {_seconds_sql("at")}, dm FROM busy WHERE dm <> 0
        UNION ALL
        SELECT 1, pool, owner_id, {_seconds_sql("at")}, CASE WHEN n > 0 THEN 1 ELSE 0 END
        FROM counted WHERE (n > 0 AND n - dn <= 0) OR (n <= 0 AND n - dn > 0)
        UNION ALL
        SELECT 2, pool, owner_id, SUM(
            CASE WHEN COALESCE({run_end}, {window_end}) < {window_end}
                 THEN COALESCE({run_end}, {window_end}) ELSE {window_end} END
            - CASE WHEN {run_start} > 0 THEN {run_start} ELSE 0 END), 0
        FROM runs GROUP BY pool, owner_id
        UNION ALL
        SELECT 3, pool, NULL, MAX(COALESCE({run_end}, {window_end}) - {run_start}), 0
        FROM runs GROUP BY pool
    """


def _counted_sql() -> str:
    """(owner, at, min(n_u, cap)) where that changes before `until`, for one pool: its
    users' jobs in the system, clamped to the pool's largest number of jobs on a device
    at once (`cap`). phi_u = min(n_u, theta w_u) <= m(t) <= cap, so min(n_u, cap) gives
    the same fair rates; and of the queued jobs only each user's first `cap` arrivals
    can change it (they stay to the end of the window)."""
    job = Job._meta.db_table
    arrived = "CASE WHEN started_at < created_at THEN started_at ELSE created_at END"
    clamped = "CASE WHEN n < %(cap)s THEN n ELSE %(cap)s END"
    before = "CASE WHEN n - dn < %(cap)s THEN n - dn ELSE %(cap)s END"
    return f"""
        WITH spans AS (
            SELECT owner_id, {arrived} AS arrived, finished_at AS left_at FROM {job}
            WHERE finished_at > %(t0)s AND finished_at <= %(t1)s AND device_type = %(pool)s
            UNION ALL
            SELECT owner_id, {arrived}, NULL FROM {job}
            WHERE status = 'running' AND device_type = %(pool)s
        ), queued AS (
            SELECT owner_id, created_at AS arrived,
                   ROW_NUMBER() OVER (PARTITION BY owner_id ORDER BY created_at) AS k
            FROM {job}
            WHERE status = 'queued' AND device_type = %(pool)s AND created_at < %(until)s
        ), moves AS (
            SELECT owner_id, arrived AS at, 1 AS dn FROM spans WHERE arrived < %(until)s
            UNION ALL
            SELECT owner_id, left_at, -1 FROM spans WHERE left_at < %(until)s
            UNION ALL
            SELECT owner_id, arrived, 1 FROM queued WHERE k <= %(cap)s
        ), counted AS (
            SELECT owner_id, at, dn, SUM(dn) OVER (PARTITION BY owner_id ORDER BY at) AS n
            FROM (
                SELECT owner_id, at, CAST(SUM(dn) AS INTEGER) AS dn
                FROM moves GROUP BY owner_id, at
            ) grouped
        )
        SELECT owner_id, {_seconds_sql("at")}, {clamped} FROM counted
        WHERE {clamped} <> {before}
        ORDER BY 2
    """


@dataclass
class _Waiting:
    """One user's running figures in the sweep (see `_sweep_pool`)."""

    weight: float
    jobs: int = 0  # min(n_u, cap): in the system when >= 1
    joined_at: float = 0.0  # when `jobs` last became positive
    joined_virtual: float = 0.0  # V then
    entitled: float = 0.0
    received: float = 0.0
    longest: tuple[float, float] = (0.0, 0.0)  # the longest stretch in the system


@dataclass
class _Busy:
    """m(t), the pool's jobs on a device, as a step function over [0, end]: `at` sorted,
    `level` after each point and `done`, the device seconds delivered by then."""

    at: list[float] = field(default_factory=list)
    level: list[int] = field(default_factory=list)
    done: list[float] = field(default_factory=list)

    @classmethod
    def from_changes(cls, changes: list[tuple[float, int]], end: float) -> _Busy:
        busy = cls()
        if not changes:
            return busy
        # Time-sorted; before the window counts as its start.
        at = np.clip(np.array([change[0] for change in changes], dtype=float), 0.0, end)
        level = np.cumsum(np.array([change[1] for change in changes], dtype=np.int64))
        before = np.concatenate(([0], level[:-1]))
        done = np.cumsum(before * np.diff(at, prepend=0.0))
        busy.at, busy.level, busy.done = at.tolist(), level.tolist(), done.tolist()
        return busy

    def delivered_at(self, at: np.ndarray) -> np.ndarray:
        """`delivered` at each of the sorted instants `at`, at once."""
        if not self.at:
            return np.zeros_like(at)
        points = np.array(self.at)
        index = np.searchsorted(points, at, side="right") - 1
        inside = np.maximum(index, 0)
        found = np.array(self.done)[inside] + np.array(self.level)[inside] * (at - points[inside])
        return np.where(index >= 0, found, 0.0)

    def delivered(self, at: float) -> float:
        index = bisect.bisect_right(self.at, at) - 1
        if index < 0:
            return 0.0
        return self.done[index] + self.level[index] * (at - self.at[index])

    def pieces(self, low: float, high: float) -> Iterator[tuple[int, float]]:
        """(m, seconds) for each stretch of constant m in [low, high]."""
        first = bisect.bisect_right(self.at, low) - 1
        level = self.level[first] if first >= 0 else 0
        for index in range(first + 1, len(self.at)):
            at = self.at[index]
            if at >= high:
                break
            yield level, at - low
            low, level = at, self.level[index]
        yield level, high - low


def _sweep_pool(
    changes: list[tuple[int, float, int]],
    busy: _Busy,
    weights: dict[int, float],
    end: float,
    *,
    heaviest: float | None = None,
    present_from: int | None = None,
) -> dict[int, _Waiting]:
    """E_u over [0, end] from the time-sorted changes (user, at, min(n_u, cap)) of the
    users' jobs in the system and the pool's busy devices m(t), in one pass.

    The loop runs over the users' change points only: the fair rate is kept as a virtual
    clock V (dV = theta dt, so E_u = w_u * (V at leaving - V at joining)). Between two
    change points the waiting users and their n_u are fixed; when none of them can be
    capped by its job count (the pool's largest m is at most W * n_u / w_u for each, W
    the waiting users' weight: checked in O(1) as m_max * w_max <= W first), theta = m / W
    and V advances by the device seconds delivered over W. Otherwise each stretch of
    constant m is water-filled: the capped users (n_u < theta w_u, the smallest n_u / w_u
    first) get n_u, the others share the rest by weight.

    Where every stretch passes the O(1) test, n_u does not matter, and changes that only
    say who is in the system (1 or 0) give the exact figures (`_sweep_counted`).
    `heaviest`: the largest weight of the pool's users. `present_from`: from this change
    on every stretch passes the O(1) test, and that part runs vectorised (`_sweep_present`).
    """
    users: dict[int, _Waiting] = {}
    waiting: dict[int, _Waiting] = {}
    virtual, weight_sum, clock, delivered = 0.0, 0.0, 0.0, 0.0
    most = max(busy.level, default=0)
    if heaviest is None:
        heaviest = max((weights[user_id] for user_id, _, _ in changes), default=0.0)

    def fill(order: list[_Waiting], level: int, span: float) -> None:
        nonlocal virtual
        if span <= 0 or level <= 0:
            return
        remaining, weight_left = float(level), weight_sum
        capped = 0
        for state in order:
            if state.jobs * weight_left > remaining * state.weight or weight_left <= state.weight:
                break
            remaining -= state.jobs
            weight_left -= state.weight
            capped += 1
        theta = remaining / weight_left
        virtual += theta * span
        for state in order[:capped]:
            state.entitled += (state.jobs - theta * state.weight) * span

    def advance(to: float) -> None:
        nonlocal clock, delivered, virtual
        if to <= clock:
            return
        delivered_now = busy.delivered(to)
        if waiting:
            if most * heaviest <= weight_sum or all(
                most * state.weight <= weight_sum * state.jobs for state in waiting.values()
            ):  # nobody capped at any m of the pool
                virtual += (delivered_now - delivered) / weight_sum
            else:
                order = sorted(waiting.values(), key=lambda state: state.jobs / state.weight)
                # The fill is linear in the span: one per busy level, not one per piece.
                seconds_at: dict[int, float] = {}
                for level, span in busy.pieces(clock, to):
                    seconds_at[level] = seconds_at.get(level, 0.0) + span
                for level, span in seconds_at.items():
                    fill(order, level, span)
        clock, delivered = to, delivered_now

    looped = changes if present_from is None else changes[:present_from]
    for user_id, at, jobs in looped:
        # The first change of an instant moves the clock there; the others find it there.
        if at > clock:
            advance(at if at < end else end)
        state = users.get(user_id)
        if state is None:
            state = users[user_id] = _Waiting(weights[user_id])
        if state.jobs <= 0 < jobs:
            waiting[user_id] = state
            weight_sum += state.weight
            state.joined_at, state.joined_virtual = clock, virtual
        elif jobs <= 0 < state.jobs:
            _leave(state, clock, virtual)
            del waiting[user_id]
            weight_sum = weight_sum - state.weight if waiting else 0.0
        state.jobs = jobs
    # An empty tail leaves the last stretch (to the end) to the loop: it may be capped.
    if present_from is not None and present_from < len(changes):
        _sweep_present(changes[present_from:], busy, weights, end, users, waiting, virtual, clock)
        return users
    advance(end)
    for state in waiting.values():
        _leave(state, end, virtual)
    return users


def _sweep_present(
    changes: list[tuple[int, float, int]],
    busy: _Busy,
    weights: dict[int, float],
    end: float,
    users: dict[int, _Waiting],
    waiting: dict[int, _Waiting],
    virtual: float,
    clock: float,
) -> None:
    """The rest of `_sweep_pool` from `clock` on, where nobody can be capped, as array
    operations instead of a loop: each change toggles its user in or out of the system
    (only presence changes are given), W is the running sum of the weights in, V advances
    by the device seconds delivered over W, and E_u = w_u * (V at leaving - V at joining).
    `users` and `waiting` come in as the loop left them and go out finished."""
    count = len(changes)
    weight_in = sum(state.weight for state in waiting.values())
    owners = np.fromiter((change[0] for change in changes), dtype=np.int64, count=count)
    # The clock: moved by the first change of an instant, never back, never past the end.
    times = np.fromiter((change[1] for change in changes), dtype=float, count=count)
    times = np.minimum(np.maximum(times, clock), end)
    joins = np.fromiter((change[2] > 0 for change in changes), dtype=bool, count=count)
    for user_id in set(owners.tolist()) - users.keys():
        users[user_id] = _Waiting(weights[user_id])
    weight = np.fromiter((users[user_id].weight for user_id in owners.tolist()), float, count)
    sign = np.where(joins, 1.0, -1.0)
    # W and the number of users in the system over each stretch: before each change, and
    # after the last one up to the end.
    weight_over = np.concatenate(([weight_in], weight_in + np.cumsum(sign * weight)))
    present_over = np.concatenate(([len(waiting)], len(waiting) + np.cumsum(sign)))
    delivered = busy.delivered_at(np.concatenate(([clock], times, [end])))
    step = np.divide(
        np.diff(delivered),
        weight_over,
        out=np.zeros(count + 1),
        where=(present_over > 0) & (weight_over > 0),
    )
    virtual_at = virtual + np.cumsum(step)  # V at each change, then at the end
    virtual_end = float(virtual_at[-1])
    # Each user's stays in order: a leave closes the stay its previous change (or the
    # loop, for users in the system at `clock`) opened.
    order = np.lexsort((np.arange(count), owners))
    by_owner = owners[order]
    starts = np.flatnonzero(np.diff(by_owner, prepend=-1))
    bounds = np.append(starts, count)
    open_at = {key: (state.joined_at, state.joined_virtual) for key, state in waiting.items()}
    times_sorted, virtual_sorted, joins_sorted = times[order], virtual_at[:-1][order], joins[order]
    for first, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        user_id = int(by_owner[first])
        state = users[user_id]
        opened = open_at.pop(user_id, None)
        stay_times = times_sorted[first:stop]
        stay_virtual = virtual_sorted[first:stop]
        if opened is not None:  # in the system at `clock`: the first change is its leave
            stay_times = np.concatenate(([opened[0]], stay_times))
            stay_virtual = np.concatenate(([opened[1]], stay_virtual))
        elif not joins_sorted[first]:
            raise ValueError(f"user {user_id} leaves a pool it was not in")
        if len(stay_times) % 2:  # still in the system at the end
            stay_times = np.append(stay_times, end)
            stay_virtual = np.append(stay_virtual, virtual_end)
        state.entitled += state.weight * float(np.sum(stay_virtual[1::2] - stay_virtual[::2]))
        lengths = stay_times[1::2] - stay_times[::2]
        longest = int(np.argmax(lengths))  # the first of the longest
        if lengths[longest] > state.longest[1] - state.longest[0]:
            state.longest = (float(stay_times[2 * longest]), float(stay_times[2 * longest + 1]))
    for user_id, (joined_at, joined_virtual) in open_at.items():  # no change after `clock`
        state = users[user_id]
        state.joined_at, state.joined_virtual = joined_at, joined_virtual
        _leave(state, end, virtual_end)


def _leave(state: _Waiting, at: float, virtual: float) -> None:
    state.entitled += state.weight * (virtual - state.joined_virtual)
    if at - state.joined_at > state.longest[1] - state.longest[0]:
        state.longest = (state.joined_at, at)


def _runs_of(
    pool: str, user_ids: list[int], params: dict[str, Any]
) -> dict[int, list[tuple[float, float]]]:
    """The runs (start, end in seconds after the window's start) of a few users of a pool."""
    if not user_ids:
        return {}
    marks = ", ".join(["%s"] * len(user_ids))
    sql = f"""
        WITH {_runs_sql()}
        SELECT owner_id, {_seconds_sql("run_start")}, {_seconds_sql("COALESCE(run_end, %(t1)s)")}
        FROM runs WHERE pool = %(pool)s AND owner_id IN ({marks})
    """
    # One placeholder style per statement: the users' ids go in by name too.
    named = {f"u{index}": user_id for index, user_id in enumerate(user_ids)}
    sql = sql.replace(f"IN ({marks})", "IN (" + ", ".join(f"%({key})s" for key in named) + ")")
    runs: dict[int, list[tuple[float, float]]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, {**params, **named, "pool": pool})
        for owner_id, start, stop in cursor.fetchall():
            runs.setdefault(owner_id, []).append((float(start), float(stop)))
    return runs


def _received_between(runs: list[tuple[float, float]], low: float, high: float) -> float:
    return sum(max(0.0, min(stop, high) - max(start, low)) for start, stop in runs)


def _max_normalised_gap(
    pool: str,
    users: dict[int, _Waiting],
    names: dict[int, str],
    longest_job: float,
    params: dict[str, Any],
    limit: int = 20,
) -> NormalisedGap | None:
    """The largest |R_i/w_i - R_j/w_j| over the common part of two users' longest stretches
    in the system, among the `limit` users entitled to most; with the SFQ bound beside it."""
    chosen = sorted(users.items(), key=lambda item: -item[1].entitled)[:limit]
    runs = _runs_of(pool, [user_id for user_id, _ in chosen], params)
    best: NormalisedGap | None = None
    for index, (first_id, first) in enumerate(chosen):
        for second_id, second in chosen[index + 1 :]:
            low = max(first.longest[0], second.longest[0])
            high = min(first.longest[1], second.longest[1])
            if high <= low:
                continue
            gap = abs(
                _received_between(runs.get(first_id, []), low, high) / first.weight
                - _received_between(runs.get(second_id, []), low, high) / second.weight
            )
            if best is None or gap > best["seconds"]:
                best = {
                    "users": [names[first_id], names[second_id]],
                    "seconds": gap,
                    "over_seconds": high - low,
                    "bound_seconds": longest_job / first.weight + longest_job / second.weight,
                }
    return best


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


def _unsure_until(
    presence: list[tuple[int, float, int]], weights: dict[int, float], most: float, end: float
) -> float | None:
    """Where the last stretch ends in which some user might be capped by its job count as
    far as presence tells (the pool's largest m times the largest weight above W, the
    waiting users' weight), or None: the same stretches as `_sweep_pool`, without V."""
    if not presence:
        return None
    count = len(presence)
    joins = np.fromiter((jobs > 0 for _, _, jobs in presence), dtype=bool, count=count)
    weight = np.fromiter((weights[user_id] for user_id, _, _ in presence), float, count)
    sign = np.where(joins, 1.0, -1.0)
    # Presence changes toggle: W and the number in the system after each change.
    weight_after = np.cumsum(sign * weight)
    present_after = np.cumsum(sign)
    times = np.fromiter((at for _, at, _ in presence), dtype=float, count=count)
    times = np.minimum(np.maximum(times, 0.0), end)
    # The stretch ending at each instant the clock moves to, and the last one to the end.
    ends = np.append(times, end)
    moved = np.diff(ends, prepend=0.0) > 0
    weight_over = np.concatenate(([0.0], weight_after))
    present_over = np.concatenate(([0], present_after))
    # With a margin: the sweep may sum the same weights in another order.
    doubtful = moved & (present_over > 0) & (most > weight_over * (1 - 1e-9))
    found = np.flatnonzero(doubtful)
    return float(ends[found[-1]]) if len(found) else None


def _sweep_counted(
    pool: str,
    presence: list[tuple[int, float, int]],
    busy_changes: list[tuple[float, int]],
    weights: dict[int, float],
    params: dict[str, Any],
) -> dict[int, _Waiting]:
    """One pool's sweep from who is in the system; where that cannot rule out a user
    capped by its job count (few users waiting beside many devices), again with the
    exact counts up to the end of the last such stretch (`_counted_sql`)."""
    window = params["w"]
    busy = _Busy.from_changes(busy_changes, window)
    heaviest = max(
        (weights[user_id] for user_id in {user_id for user_id, _, _ in presence}), default=0.0
    )
    unsure = _unsure_until(presence, weights, max(busy.level, default=0) * heaviest, window)
    if unsure is None:
        return _sweep_pool(presence, busy, weights, window, heaviest=heaviest, present_from=0)
    # Split half way to the next change: timestamps and their seconds then agree on a side.
    later = bisect.bisect_right([at for _, at, _ in presence], unsure)
    split = (unsure + presence[later][1]) / 2 if later < len(presence) else unsure + 1.0
    until = datetime.fromisoformat(str(params["now"])) - WINDOW + timedelta(seconds=split)
    cap = max(1, max(busy.level, default=0))
    counted_params = {
        **params,
        "pool": pool,
        "until": connection.ops.adapt_datetimefield_value(until),
        "cap": cap,
    }
    with connection.cursor() as cursor:
        cursor.execute(_counted_sql(), counted_params)
        counts = [(owner, float(at), int(jobs)) for owner, at, jobs in cursor.fetchall()]
    # Exact counts before `until`, then who is in the system: every stretch from `until`
    # on passed the O(1) test, where n_u does not matter.
    changes = counts + presence[later:]
    return _sweep_pool(changes, busy, weights, window, heaviest=heaviest, present_from=len(counts))


def pool_fairness(now: datetime | None = None) -> list[PoolFairness]:
    """Each pool's users measured against the fluid fair schedule over the window (see
    the module docstring): one query for the change points (`_fluid_sql`), one for the
    users, one for their backlog, one sweep per pool over its users' change points, and
    one query per pool for the runs of the users the normalised gap compares."""
    now = now or timezone.now()
    window = WINDOW.total_seconds()
    adapt = connection.ops.adapt_datetimefield_value
    params = {"t0": adapt(now - WINDOW), "t1": adapt(now), "w": window, "now": now.isoformat()}
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Its sorts (the queued jobs per user, the change points) then stay in memory.
            cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(_fluid_sql(), params)
        rows = cursor.fetchall()
    busy: dict[str, list[tuple[float, int]]] = {}
    per_pool: dict[str, list[tuple[int, float, int]]] = {}
    received: dict[tuple[str, int], float] = {}
    longest: dict[str, float] = {}
    for kind, pool, owner_id, value, count in rows:
        if kind == 0:
            busy.setdefault(pool, []).append((float(value), int(count)))
        elif kind == 1:
            per_pool.setdefault(pool, []).append((owner_id, float(value), int(count)))
        elif kind == 2:
            received[pool, owner_id] = float(value)
        else:
            longest[pool] = max(0.0, float(value or 0.0))
    # Time order, sorted here: cheaper than by the database's collation of the pool names.
    for changes in busy.values():
        changes.sort()
    for events in per_pool.values():
        events.sort(key=lambda change: change[1])
    user_ids = {owner for events in per_pool.values() for owner, _, _ in events}
    users = {
        pk: (username, weight, oldest)
        for pk, username, weight, oldest in User.objects.filter(pk__in=user_ids)
        .annotate(oldest_queued=_oldest_queued_created_at())
        .values_list("pk", "username", "weight", "oldest_queued")
    }
    backlog = {
        (pool, user_id): (queued, running)
        for pool, user_id, queued, running in FairShareAccount.objects.filter(
            user_id__in=user_ids
        ).values_list("pool__device_type", "user_id", "queued_count", "running_count")
    }
    weights = {pk: weight for pk, (_, weight, _) in users.items()}
    names = {pk: username for pk, (username, _, _) in users.items()}
    result: list[PoolFairness] = []
    for pool in sorted(per_pool):
        swept = _sweep_counted(pool, per_pool[pool], busy.get(pool, []), weights, params)
        for pk, state in swept.items():
            state.received = received.get((pool, pk), 0.0)
        bound = lag_bound(longest.get(pool, 0.0), settings.ZYPHER_DASHBOARD_LAG_SLACK_SECONDS)
        device_seconds = sum(state.received for state in swept.values())
        shares_of_pool: list[UserShare] = []
        for pk, state in swept.items():
            lag = state.entitled - state.received
            queued, running = backlog.get((pool, pk), (0, 0))
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
                    "queued": queued,
                    "running": running,
                    "flagged": abs(lag) > bound,
                }
            )
        shares_of_pool.sort(key=lambda row: (-row["lag_seconds"], row["user"]))
        result.append(
            {
                "pool": pool,
                "device_seconds": device_seconds,
                "longest_job_seconds": longest.get(pool, 0.0),
                "lag_bound_seconds": bound,
                "jain_index": jain_index(shares_of_pool),
                "max_normalised_gap": _max_normalised_gap(
                    pool, swept, names, longest.get(pool, 0.0), params
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


def dashboard_stats(now: datetime | None = None) -> dict[str, Any]:
    """All the dashboard's figures, JSON-ready (what `GET /api/stats/` answers)."""
    now = now or timezone.now()
    pools = pool_fairness(now)
    return {
        "generated_at": now.isoformat(),
        "queue_depth": queue_depth(),
        "queued_by_user": queued_by_user(now=now),
        "running": running_jobs(now),
        "devices": device_states(),
        "waiting_for_a_device": waiting_for_a_device(),
        "throughput": throughput(now),
        "service_time": service_time(now),
        "shares": [row for pool in pools for row in pool["shares"]],
        "fairness": fairness(pools, now),
        "queue_repairs": queue_repairs(now),
    }


__all__ = [
    "dashboard_stats",
    "device_states",
    "fairness",
    "idle_gaps",
    "jain_index",
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
