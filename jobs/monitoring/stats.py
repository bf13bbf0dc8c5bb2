"""The operators' dashboard figures: queue depth, devices, throughput, service time, fairness.

Each function is a few aggregate queries that stay fast with millions of jobs: the queue
is read through its partial indexes and the counters of `FairShareAccount`, history only
through a bounded window on `finished_at` (index `job_finished_at`), and Python loops run
over users, pools, kinds and minutes, never over jobs. `bench/bench_dashboard.py` times
every function here with 1,000,000 job rows.

Fairness over the window (the last hour by default). A user is *active* if a job of theirs
ended on a device in the window or they have work queued or running now. With `r_i` the
device seconds user `i` received (the durations of their jobs that finished in the
window), `R = Σ r_i` and `w_i` their weight:

    received share  r_i / R
    entitled share  w_i / Σ w_j            (over the active users)
    lag             w_i / Σ w_j · R − r_i  (seconds: positive means the user is owed time)
    Jain's index    (Σ x_i)² / (n · Σ x_i²)  with x_i = r_i / w_i   (1 = perfectly fair)

The policy guarantees fair shares only between users backlogged over the whole window
(`jobs.fairshare`); a user who arrived a minute ago shows a lag that is not unfairness,
which is why the age of each user's oldest queued job stands next to it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.db import connection
from django.db.models import Count, Min, OuterRef, Q, Subquery, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone

from jobs.models import FairShareAccount, Job, JobStatus, QueueRepair, User

WINDOW = timedelta(hours=1)
THROUGHPUT_MINUTES = (1, 5, 15, 60)
# "How fast the service goes right now": device seconds delivered over this many minutes.
RECENT_MINUTES = 5
# Upper edges (seconds) of the idle-gap histogram's buckets; the last bucket is open.
IDLE_GAP_EDGES = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
TOP_USERS = 10
MAX_RUNNING_LISTED = 200
COMPLETED = (JobStatus.SUCCEEDED, JobStatus.FAILED)  # ended on a device


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
    user: str
    user_pk: int
    weight: float
    received_seconds: float
    received_share: float
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


class Fairness(TypedDict):
    window_seconds: float
    device_seconds: float
    jain_index: float | None
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


def running_jobs(now: datetime | None = None, limit: int = MAX_RUNNING_LISTED) -> list[RunningJob]:
    """Who holds each device: the running jobs, longest-running first."""
    now = now or timezone.now()
    rows = (
        Job.objects.filter(status=JobStatus.RUNNING)
        .order_by("started_at", "id")
        .values_list("device", "device_type", "owner__username", "public_id", "kind", "started_at")[
            :limit
        ]
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
        }
        for device, pool, user, public_id, kind, started_at in rows
    ]


# The app that keeps a table of devices supplies its rows (`devices.apps` registers one at
# start-up): `jobs` knows devices only by the names its jobs ran on.
_device_states_provider: Callable[[], list[DeviceState]] | None = None


def provide_device_states(provider: Callable[[], list[DeviceState]]) -> None:
    """Register where the dashboard and `/metrics` read registered devices from."""
    global _device_states_provider
    _device_states_provider = provider


def device_states() -> list[DeviceState]:
    """Every registered device and its state (at most MAX_RUNNING_LISTED), or none when no
    app provides them."""
    if _device_states_provider is None:
        return []
    return _device_states_provider()[:MAX_RUNNING_LISTED]


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


def shares(now: datetime | None = None, flag_above: float = 0.10) -> list[UserShare]:
    """Each active user's received and entitled share of device time over the window, and
    their lag (see the module docstring). `flagged` marks a share that differs from the
    entitlement by more than `flag_above` (a fraction of all device time)."""
    now = now or timezone.now()
    received = dict(
        Job.objects.filter(
            finished_at__gt=now - WINDOW,
            finished_at__lte=now,
            status__in=COMPLETED,
            duration__isnull=False,
        )
        .values_list("owner_id")
        .annotate(seconds=Sum("duration"))
        .order_by()
    )
    backlog = {
        user_id: (queued, running)
        for user_id, queued, running in FairShareAccount.objects.values_list("user_id")
        .annotate(queued=Sum("queued_count"), running=Sum("running_count"))
        .filter(Q(queued__gt=0) | Q(running__gt=0))
        .order_by()
    }
    users = list(
        User.objects.filter(pk__in=set(received) | set(backlog))
        .annotate(oldest_queued=_oldest_queued_created_at())
        .values_list("pk", "username", "weight", "oldest_queued")
    )
    total_seconds = sum(received.values())
    total_weight = sum(weight for _, _, weight, _ in users)
    rows: list[UserShare] = []
    for pk, username, weight, oldest in users:
        seconds = received.get(pk, 0.0)
        entitled = weight / total_weight
        share = seconds / total_seconds if total_seconds else 0.0
        queued, running = backlog.get(pk, (0, 0))
        rows.append(
            {
                "user": username,
                "user_pk": pk,
                "weight": weight,
                "received_seconds": seconds,
                "received_share": share,
                "entitled_share": entitled,
                "lag_seconds": entitled * total_seconds - seconds,
                "oldest_queued_age_seconds": _age(now, oldest),
                "queued": queued,
                "running": running,
                "flagged": bool(total_seconds) and abs(share - entitled) > flag_above,
            }
        )
    rows.sort(key=lambda row: (-row["lag_seconds"], row["user"]))
    return rows


def jain_index(rows: list[UserShare]) -> float | None:
    """Jain's fairness index of the weight-normalised device time (None without any)."""
    normalised = [row["received_seconds"] / row["weight"] for row in rows]
    squares = sum(x * x for x in normalised)
    if not squares:
        return None
    return sum(normalised) ** 2 / (len(normalised) * squares)


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


def fairness(rows: list[UserShare], now: datetime | None = None) -> Fairness:
    now = now or timezone.now()
    return {
        "window_seconds": WINDOW.total_seconds(),
        "device_seconds": sum(row["received_seconds"] for row in rows),
        "jain_index": jain_index(rows),
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


# --- everything --------------------------------------------------------------------------------


def dashboard_stats(now: datetime | None = None, flag_above: float = 0.10) -> dict[str, Any]:
    """All the dashboard's figures, JSON-ready (what `GET /api/stats/` answers)."""
    now = now or timezone.now()
    user_shares = shares(now, flag_above)
    return {
        "generated_at": now.isoformat(),
        "queue_depth": queue_depth(),
        "queued_by_user": queued_by_user(now=now),
        "running": running_jobs(now),
        "devices": device_states(),
        "throughput": throughput(now),
        "service_time": service_time(now),
        "shares": user_shares,
        "fairness": fairness(user_shares, now),
        "queue_repairs": queue_repairs(now),
    }


__all__ = [
    "dashboard_stats",
    "device_states",
    "fairness",
    "idle_gaps",
    "jain_index",
    "oldest_queued_age",
    "queue_depth",
    "queue_repairs",
    "queue_repairs_by_kind",
    "queued_by_user",
    "running_jobs",
    "service_time",
    "shares",
    "throughput",
]
