"""Prometheus metrics, read from the database at scrape time.

Every figure comes from the shared database when `/metrics` is scraped (a custom
collector, no in-process counters), so any gunicorn worker answers the same numbers and
jobs the dispatcher processes finish are counted without those processes exporting
anything.

The job counters (`zypher_jobs_total`, the service-time histogram) are tallies of ended
jobs by `finished_at`. Re-counting the whole table at every scrape would grow with
history, so each process keeps a settled tally of the jobs that ended before a horizon
(`SETTLE_SECONDS` ago, long after such a transaction committed) and each scrape adds the
slice since the previous horizon and counts the last `SETTLE_SECONDS` afresh: one index
range scan on `job_finished_at`. The first scrape of a process counts the history once.
Deleting old jobs would make the counters drop, which Prometheus reads as a reset.

The per-pool figures (queued, running, backlogged users, device seconds served) are sums
of the fair-share counters (`FairShareAccount`), one row per user and pool: a scrape costs
the same with ten queued jobs or ten million. Every registered device is listed, however
many. With `ZYPHER_METRICS_TOKEN` set, a scrape must send it as a bearer token.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypedDict

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from jobs.models import FINAL_STATUSES, FairPool, Job, JobStatus
from jobs.monitoring import stats

SETTLE_SECONDS = 60.0
SERVICE_TIME_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass
class Tally:
    """Ended jobs of one (kind, status): how many, their device seconds, and how many took
    at most each bucket's seconds (jobs without a duration, e.g. cancelled ones, count
    only in `count`)."""

    count: int = 0
    timed: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(SERVICE_TIME_BUCKETS))

    def add(self, other: Tally) -> None:
        self.count += other.count
        self.timed += other.timed
        self.seconds += other.seconds
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


def tally_ended_jobs(
    since: datetime | None, until: datetime | None
) -> dict[tuple[str, str], Tally]:
    """Tallies of jobs that ended in [since, until), by (kind, status)."""
    jobs = Job.objects.filter(status__in=FINAL_STATUSES, finished_at__isnull=False)
    if since is not None:
        jobs = jobs.filter(finished_at__gte=since)
    if until is not None:
        jobs = jobs.filter(finished_at__lt=until)
    bucket_counts = {
        f"le{index}": Count("id", filter=Q(duration__lte=bound))
        for index, bound in enumerate(SERVICE_TIME_BUCKETS)
    }
    rows = (
        jobs.values("kind", "status")
        .annotate(
            n=Count("id"),
            timed=Count("duration"),
            seconds=Sum("duration"),
            **bucket_counts,
        )
        .order_by()
    )
    return {
        (row["kind"], row["status"]): Tally(
            count=row["n"],
            timed=row["timed"],
            seconds=row["seconds"] or 0.0,
            buckets=[row[f"le{index}"] for index in range(len(SERVICE_TIME_BUCKETS))],
        )
        for row in rows
    }


class JobsCollector(Collector):
    """Queue depth, running jobs, device states and ended-job counters, from the database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settled: dict[tuple[str, str], Tally] = {}
        self._horizon: datetime | None = None

    def forget(self) -> None:
        """Drop the settled tallies (tests: the database was rolled back)."""
        with self._lock:
            self._settled = {}
            self._horizon = None

    def ended_jobs(self, now: datetime | None = None) -> dict[tuple[str, str], Tally]:
        """All ended jobs by (kind, status): the settled part plus the recent slice."""
        now = now or timezone.now()
        horizon = now - timedelta(seconds=SETTLE_SECONDS)
        with self._lock:
            if self._horizon is None or horizon > self._horizon:
                for key, tally in tally_ended_jobs(self._horizon, horizon).items():
                    self._settled.setdefault(key, Tally()).add(tally)
                self._horizon = horizon
            totals = {key: _copy(tally) for key, tally in self._settled.items()}
            recent_since = self._horizon
        for key, tally in tally_ended_jobs(recent_since, None).items():
            totals.setdefault(key, Tally()).add(tally)
        return totals

    def collect(self) -> Iterator[Metric]:
        yield from self._pool_metrics()

        oldest = GaugeMetricFamily(
            "zypher_oldest_queued_age_seconds", "Age of the oldest queued job (0 when none)."
        )
        oldest.add_metric([], stats.oldest_queued_age() or 0.0)
        yield oldest

        yield from self._device_metrics()

        ended = self.ended_jobs()
        jobs_total = CounterMetricFamily(
            "zypher_jobs",
            "Jobs that ended, by kind and final status (succeeded, failed, cancelled).",
            labels=["kind", "status"],
        )
        service = HistogramMetricFamily(
            "zypher_job_service_seconds",
            "Device time of jobs that ran to an end (succeeded or failed), by kind.",
            labels=["kind"],
        )
        by_kind: dict[str, Tally] = {}
        for (kind, status), tally in sorted(ended.items()):
            jobs_total.add_metric([kind, status], tally.count)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                by_kind.setdefault(kind, Tally()).add(tally)
        for kind, tally in sorted(by_kind.items()):
            buckets = [
                (_le(bound), count)
                for bound, count in zip(SERVICE_TIME_BUCKETS, tally.buckets, strict=True)
            ]
            service.add_metric([kind], [*buckets, ("+Inf", tally.timed)], tally.seconds)
        yield jobs_total
        yield service

        repairs = CounterMetricFamily(
            "zypher_queue_repairs",
            "Drifts of the queue's bookkeeping found and repaired (jobs.invariants), by kind.",
            labels=["kind"],
        )
        for kind, count in stats.queue_repairs_by_kind().items():
            repairs.add_metric([kind], count)
        yield repairs

    def _pool_metrics(self) -> Iterator[Metric]:
        """Per pool, from the counters the queue keeps (never a scan of the queued jobs)."""
        queued = GaugeMetricFamily(
            "zypher_queue_depth", "Jobs waiting in the queue, by device pool.", labels=["pool"]
        )
        running = GaugeMetricFamily(
            "zypher_jobs_running", "Jobs running on a device now, by pool.", labels=["pool"]
        )
        backlogged = GaugeMetricFamily(
            "zypher_pool_backlogged_users", "Users with queued jobs, by pool.", labels=["pool"]
        )
        served = CounterMetricFamily(
            "zypher_pool_served_seconds",
            "Device seconds charged to users (their fair-share accounts), by pool.",
            labels=["pool"],
        )
        for pool in pool_figures():
            queued.add_metric([pool["pool"]], pool["queued"])
            running.add_metric([pool["pool"]], pool["running"])
            backlogged.add_metric([pool["pool"]], pool["backlogged_users"])
            served.add_metric([pool["pool"]], pool["served_seconds"])
        yield from (queued, running, backlogged, served)

    def _device_metrics(self) -> Iterator[Metric]:
        """Device states: the registered devices when an app provides them
        (`stats.provide_device_states`); the devices of the running jobs as `busy` otherwise
        (or in addition, for unregistered names)."""
        states = GaugeMetricFamily(
            "zypher_device_state",
            "1 for each device in its current state (unready, ready, busy, offline).",
            labels=["device", "pool", "state"],
        )
        seen: set[str] = set()
        for device in stats.device_states(limit=None):  # every one: no silent cap
            states.add_metric([device["device"], device["pool"], device["state"]], 1)
            seen.add(device["device"])
        for job in stats.running_jobs(limit=None):
            if job["device"] and job["device"] not in seen:
                states.add_metric([job["device"], job["pool"], "busy"], 1)
                seen.add(job["device"])
        yield states


class PoolFigures(TypedDict):
    pool: str
    queued: int
    running: int
    backlogged_users: int
    served_seconds: float


def pool_figures() -> list[PoolFigures]:
    """Each pool's sums of its accounts' counters: one GROUP BY over pools and accounts."""
    rows = (
        FairPool.objects.order_by("device_type")
        .annotate(
            queued=Coalesce(Sum("accounts__queued_count"), 0),
            running=Coalesce(Sum("accounts__running_count"), 0),
            backlogged=Count("accounts", filter=Q(accounts__queued_count__gt=0)),
            served=Coalesce(Sum("accounts__served_seconds"), 0.0),
        )
        .values_list("device_type", "queued", "running", "backlogged", "served")
    )
    return [
        {
            "pool": pool,
            "queued": queued,
            "running": running,
            "backlogged_users": backlogged,
            "served_seconds": served,
        }
        for pool, queued, running, backlogged, served in rows
    ]


def _copy(tally: Tally) -> Tally:
    return Tally(tally.count, tally.timed, tally.seconds, list(tally.buckets))


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


collector = JobsCollector()
# A registry of our own: the default one's process metrics would describe whichever
# gunicorn worker answered the scrape, not the service.
registry = CollectorRegistry(auto_describe=False)
registry.register(collector)


def scrape_allowed(authorization: str) -> bool:
    """Whether a scrape may read the metrics: always without ZYPHER_METRICS_TOKEN, else
    with `Authorization: Bearer <token>` (compared in constant time)."""
    token = settings.ZYPHER_METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def exposition(accept: str = "") -> tuple[bytes, str]:
    """The metrics and their content type: Prometheus' text format, or OpenMetrics when
    the scraper's `Accept` header asks for it."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
