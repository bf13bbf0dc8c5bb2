"""The operators' dashboard with 1,000,000 jobs: every query it makes, timed.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.bench_dashboard [--quick]

Needs PostgreSQL (DATABASE_URL). Fills the jobs table with INSERT ... SELECT
generate_series (no Python loop): a month of history, a busy last hour on 16 devices
(about 1,900 jobs per device), a backlog of 100,000 queued jobs over 1,000 users, and a
job running on every device; then VACUUM ANALYZE, as autovacuum would. Each dashboard
function of `jobs.monitoring.stats` is timed next to a `SELECT 1` round trip measured in the same
run, then the whole dashboard (figures, charts and template) and each of its two parts
(the live part every refresh, the hour's on its slower clock), the JSON API's figures and
a Prometheus scrape (the first one of a process counts the history once). Prints a table
and writes bench/results/dashboard.json.

Fairness and its ceiling (each user's device time, a plain GROUP BY) are called in turn,
so the ratio holds under a changing load. `--baseline CHECKOUT` loads that checkout's
`jobs/monitoring/stats.py` beside ours and times its fairness in the same turns on the
same data (and prints the largest difference of the figures); `--reuse` keeps the rows
of an earlier fill (a cluster left running), `--fairness-only` times just those, and
`--profile` prints a cProfile of fairness.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import pstats
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import log, percentile, print_table, reset_tables, setup_django, write_results  # noqa: E402

setup_django()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.template.loader import render_to_string  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from jobs.monitoring import metrics, stats  # noqa: E402
from jobs.monitoring.dashboard import panels_context  # noqa: E402

USERS = 1_000
DEVICES = 16
RUNNING = DEVICES
LAST_HOUR = 30_000  # 16 devices × 1,875 jobs of about 1.9 s
QUEUED = 100_000
CEILING = "received per user: plain SUM (fairness's ceiling)"
FLUID = "shares: fluid fair schedule, lag"
BASELINE = "shares: the --baseline checkout's"
LIVE = "dashboard_stats part=live: the queue (/api/stats/?part=live)"
HOUR = "dashboard_stats part=hour: the last hour (/api/stats/?part=hour)"
PANELS = "dashboard panels: figures + SVG + template"
LIVE_PANELS = "dashboard panels, live part (each refresh)"
HOUR_PANELS = "dashboard panels, hour part (its own, slower refresh)"


def fill(total: int, now: datetime) -> dict[str, int]:
    """`total` job rows: history, the last hour, the backlog and the running jobs."""
    history = total - LAST_HOUR - QUEUED - RUNNING
    reset_tables()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_user (password, is_superuser, username, first_name, last_name, email,
                                   is_staff, is_active, date_joined, weight)
            SELECT '', false, 'user' || g, '', '', '', false, true, %s, 1 + (g %% 5)
            FROM generate_series(1, %s) AS g
            """,
            [now, USERS],
        )
        cursor.execute(
            "INSERT INTO jobs_fairpool (device_type, virtual_time, cost_estimate) "
            "VALUES ('cpu', 0, 2), ('gpu', 0, 2)"
        )
        common = """
            INSERT INTO jobs_job (public_id, owner_id, kind, input, device_type, priority, status,
                                  error, created_at, started_at, finished_at, device, attempts,
                                  charged_cost, charged_weight, cancelled_by, size, duration)
        """
        # A month of history before the last hour: mostly succeeded, some failed or cancelled.
        cursor.execute(
            common
            + """
            SELECT gen_random_uuid(), 1 + (g::bigint * 7919) %% %(users)s,
                   (ARRAY['limited_f', 'predict', 'noop'])[1 + g %% 3], '0'::jsonb,
                   CASE WHEN g %% 16 < 12 THEN 'cpu' ELSE 'gpu' END, 0,
                   CASE WHEN g %% 25 = 0 THEN 'failed' WHEN g %% 50 = 1 THEN 'cancelled'
                        ELSE 'succeeded' END,
                   '', ended - interval '5 seconds', ended - interval '2 seconds', ended,
                   'dev-' || (g %% 16), 1, 2, 1, '', 0, 2.0
            FROM (SELECT g, %(now)s::timestamptz - interval '1 hour'
                            - (g * interval '30 days') / %(history)s AS ended
                  FROM generate_series(1, %(history)s) AS g) AS h
            """,
            {"users": USERS, "history": history, "now": now},
        )
        # The last hour: each device runs jobs back to back, ~1.4 s each, small gaps.
        cursor.execute(
            common
            + """
            SELECT gen_random_uuid(), 1 + (g::bigint * 104729) %% %(users)s,
                   (ARRAY['limited_f', 'predict', 'noop'])[1 + g %% 3], '0'::jsonb,
                   CASE WHEN g %% 16 < 12 THEN 'cpu' ELSE 'gpu' END, 0,
                   CASE WHEN g %% 40 = 0 THEN 'failed' ELSE 'succeeded' END,
                   '', started - interval '1 second', started, started + run, 'dev-' || (g %% 16),
                   1, 2, 1, '', 0, extract(epoch FROM run)
            FROM (SELECT g, %(now)s::timestamptz - interval '3600 seconds'
                            + (g / 16) * interval '1.9 seconds' AS started,
                         interval '1 second' * (1.0 + random() * 0.8) AS run
                  FROM generate_series(0, %(jobs)s - 1) AS g) AS h
            """,
            {"users": USERS, "jobs": LAST_HOUR, "now": now},
        )
        # The backlog, with a few heavy users, and a job running on every device.
        cursor.execute(
            common
            + """
            SELECT gen_random_uuid(),
                   CASE WHEN g %% 2 = 0 THEN 1 + g %% 10 ELSE 1 + (g * 31) %% %(users)s END,
                   'limited_f', '0'::jsonb, CASE WHEN g %% 4 = 0 THEN 'gpu' ELSE 'cpu' END,
                   (g %% 7) - 3, 'queued', '',
                   %(now)s::timestamptz - (%(queued)s - g) * interval '30 milliseconds',
                   NULL, NULL, '', 0, 0, 1, '', 0, NULL
            FROM generate_series(0, %(queued)s - 1) AS g
            """,
            {"users": USERS, "queued": QUEUED, "now": now},
        )
        cursor.execute(
            common
            + """
            SELECT gen_random_uuid(), 1 + g * 37, 'limited_f', '0'::jsonb,
                   CASE WHEN g < 12 THEN 'cpu' ELSE 'gpu' END, 0, 'running', '',
                   %(now)s::timestamptz - interval '2 seconds',
                   %(now)s::timestamptz - interval '1 second', NULL, 'dev-' || g, 1, 2, 1, '', 0,
                   NULL
            FROM generate_series(0, %(running)s - 1) AS g
            """,
            {"running": RUNNING, "now": now},
        )
        cursor.execute(
            """
            INSERT INTO jobs_fairshareaccount (pool_id, user_id, virtual_time, queued_count,
                                               running_count, served_seconds)
            SELECT p.id, j.owner_id, 0, count(*) FILTER (WHERE j.status = 'queued'),
                   count(*) FILTER (WHERE j.status = 'running'), coalesce(sum(j.duration), 0)
            FROM jobs_job j JOIN jobs_fairpool p ON p.device_type = j.device_type
            GROUP BY p.id, j.owner_id
            """
        )
        cursor.execute("VACUUM ANALYZE jobs_job")
        cursor.execute("VACUUM ANALYZE jobs_fairshareaccount")
        cursor.execute("VACUUM ANALYZE jobs_user")
        cursor.execute("SELECT count(*) FROM jobs_job")
        (rows,) = cursor.fetchone()
    return {"jobs": rows, "history": history, "last_hour": LAST_HOUR, "queued": QUEUED}


def plain_received(now: datetime) -> None:
    """The ceiling for fairness: each user's device time over the same window, a plain
    GROUP BY (what the former share-of-weight figure read)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT device_type, owner_id, SUM(duration) FROM jobs_job "
            "WHERE finished_at > %s AND finished_at <= %s GROUP BY device_type, owner_id",
            [now - stats.WINDOW, now],
        )
        cursor.fetchall()


def filled_now() -> datetime | None:
    """The `now` of the data already in the table (--reuse): the fill starts the running
    jobs one second before it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(started_at) FROM jobs_job WHERE status = 'running'")
        (started,) = cursor.fetchone()
    return None if started is None else started + timedelta(seconds=1)


def baseline_stats(tree: str) -> ModuleType:
    """`jobs/monitoring/stats.py` of another checkout (--baseline), loaded beside ours, so
    the old and the new fairness run back to back on the same data."""
    path = Path(tree) / "jobs" / "monitoring" / "stats.py"
    spec = importlib.util.spec_from_file_location("baseline_stats", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def largest_difference(ours: list[Any], theirs: list[Any]) -> float:
    """The largest difference of the seconds figures of two `shares` results (the same
    rows in the same order, or inf). Flags are compared apart: the rule may differ."""
    key = ["pool", "user"]
    if [[row[k] for k in key] for row in ours] != [[row[k] for k in key] for row in theirs]:
        return float("inf")
    return max(
        (
            abs(mine[k] - other[k])
            for mine, other in zip(ours, theirs, strict=True)
            for k in ("received_seconds", "entitled_seconds", "lag_seconds")
        ),
        default=0.0,
    )


def select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def timed(function: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median and 95th percentile of `repeats` calls (after one warm-up), and the number
    of queries one call makes."""
    with CaptureQueriesContext(connection) as queries:
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return {
        "queries": len(queries.captured_queries),
        "median_ms": percentile(times, 0.5) * 1000,
        "p95_ms": percentile(times, 0.95) * 1000,
    }


def interleaved(
    cases: list[tuple[str, Callable[[], Any]]], repeats: int
) -> dict[str, dict[str, float]]:
    """`timed` for a few functions called in turn, `repeats` rounds."""
    captured = {}
    for name, function in cases:
        with CaptureQueriesContext(connection) as queries:
            function()
        captured[name] = len(queries.captured_queries)
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, function in cases:
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {
        name: {
            "queries": captured[name],
            "median_ms": percentile(times[name], 0.5) * 1000,
            "p95_ms": percentile(times[name], 0.95) * 1000,
        }
        for name, _ in cases
    }


def explain(name: str, function: Callable[[], Any]) -> None:
    """Print the plan of every SELECT that `function` makes (--explain)."""
    with CaptureQueriesContext(connection) as queries:
        function()
    for query in queries.captured_queries:
        sql = query["sql"]
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            continue
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + sql)
            plan = "\n    ".join(row[0] for row in cursor.fetchall())
        print(f"\n-- {name}\n{sql}\n    {plan}")


def first_scrape() -> dict[str, float]:
    """A Prometheus scrape by a process that has not counted the history yet."""
    times = []
    for _ in range(3):
        metrics.collector.forget()
        started = time.perf_counter()
        metrics.exposition()
        times.append(time.perf_counter() - started)
    return {"queries": 0, "median_ms": percentile(times, 0.5) * 1000, "p95_ms": max(times) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100,000 rows, fewer repeats")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, help="runs of each query (default 30)")
    parser.add_argument("--explain", action="store_true", help="print each query's plan")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the rows already in the table (no fill)"
    )
    parser.add_argument(
        "--fairness-only", action="store_true", help="time only fairness and its ceiling"
    )
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also time that checkout's fairness (its jobs/monitoring/stats.py) on the same data",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of fairness (by own time)"
    )
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        print(
            "bench_dashboard needs PostgreSQL: run it under tests/support/pgcluster.py",
            file=sys.stderr,
        )
        return 2
    rows = 200_000 if options.quick else options.rows
    repeats = options.repeats or (5 if options.quick else 30)
    call_command("migrate", verbosity=0)
    reused = filled_now() if options.reuse else None
    if reused is not None:
        now = reused
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM jobs_job")
            (count,) = cursor.fetchone()
        filled = {"jobs": count, "history": 0, "last_hour": LAST_HOUR, "queued": QUEUED}
        log(f"reusing {count:,} rows")
    else:
        now = timezone.now()
        log(f"filling {rows:,} job rows")
        started = time.monotonic()
        filled = fill(rows, now)
        log(f"filled {filled['jobs']:,} rows in {time.monotonic() - started:.1f}s; timing")

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("SELECT 1 round trip (the floor)", select_one),
        ("queue_depth: queued per pool and priority", stats.queue_depth),
        ("queued_by_user: top 10, oldest queued", lambda: stats.queued_by_user(now=now)),
        ("oldest_queued_age", lambda: stats.oldest_queued_age(now)),
        ("running_jobs: who holds each device", lambda: stats.running_jobs(now)),
        ("device_states: the Device table", stats.device_states),
        ("throughput: rates and per-minute chart", lambda: stats.throughput(now)),
        ("service_time: mean, p95 per kind", lambda: stats.service_time(now)),
        (CEILING, lambda: plain_received(now)),
        (FLUID, lambda: stats.shares(now)),
        ("idle_gaps: LAG histogram", lambda: stats.idle_gaps(now)),
        ("dashboard_stats: all of the above (/api/stats/)", lambda: stats.dashboard_stats(now)),
        (LIVE, lambda: stats.dashboard_stats(now, "live")),
        (HOUR, lambda: stats.dashboard_stats(now, "hour")),
        (
            PANELS,
            lambda: render_to_string("admin/zypher/dashboard_panels.html", panels_context(now=now)),
        ),
        (
            LIVE_PANELS,
            lambda: render_to_string(
                "admin/zypher/dashboard_live.html", panels_context("live", now)
            ),
        ),
        (
            HOUR_PANELS,
            lambda: render_to_string(
                "admin/zypher/dashboard_hour.html", panels_context("hour", now)
            ),
        ),
    ]
    baseline = baseline_stats(options.baseline) if options.baseline else None
    if baseline is not None:
        ours, theirs = stats.shares(now), baseline.shares(now)
        difference = largest_difference(ours, theirs)
        log(f"largest difference from the baseline's figures: {difference:.3g} s")
        flags = [sum(row["flagged"] for row in rows) for rows in (ours, theirs)]
        log(f"users flagged: {flags[0]} here, {flags[1]} by the baseline")
        pairs = [
            [(row["user"], row["flagged"], row["unfair_pair"]) for row in rows]
            for rows in (ours, theirs)
        ]
        log(f"the same users flagged with the same unfair pairs: {pairs[0] == pairs[1]}")
        for pool, other in zip(stats.pool_fairness(now), baseline.pool_fairness(now), strict=True):
            gaps = [figures["max_normalised_gap"] for figures in (pool, other)]
            log(f"{pool['pool']}: largest normalised gap {gaps[0]}, the baseline's {gaps[1]}")
        names = [name for name, _ in cases]
        cases.insert(names.index(FLUID) + 1, (BASELINE, lambda: baseline.shares(now)))
    if options.fairness_only:
        keep = ("SELECT 1", "received per user", "shares")
        cases = [case for case in cases if case[0].startswith(keep)]
    if options.explain:
        for name, function in cases:
            if not name.startswith(("SELECT 1", "dashboard", BASELINE)):
                explain(name, function)
    if options.profile:
        profile = cProfile.Profile()
        profile.runcall(lambda: [stats.shares(now) for _ in range(5)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    results: dict[str, dict[str, float]] = {}
    # Fairness and its ceiling take turns, so a change of the machine's load hits both.
    together = [(name, function) for name, function in cases if name in (CEILING, FLUID, BASELINE)]
    for name, function in cases:
        if name in results:
            continue
        if name in (CEILING, FLUID, BASELINE):
            results.update(interleaved(together, repeats))
        else:
            results[name] = timed(function, repeats)
        log(f"{name}: median {results[name]['median_ms']:.2f} ms")
    if not options.fairness_only:
        metrics.collector.forget()
        results["/metrics scrape, first of a process (counts history)"] = first_scrape()
        metrics.exposition()
        results["/metrics scrape, later ones"] = timed(metrics.exposition, repeats)
    floor = results["SELECT 1 round trip (the floor)"]["median_ms"]
    print_table(
        f"Dashboard queries with {filled['jobs']:,} job rows ({filled['queued']:,} queued, "
        f"{filled['last_hour']:,} ended in the last hour; PostgreSQL; {repeats} runs each)",
        ["query", "queries", "median ms", "p95 ms", "× SELECT 1"],
        [
            [
                name,
                int(figures["queries"]) or "",
                figures["median_ms"],
                figures["p95_ms"],
                f"{figures['median_ms'] / floor:,.0f}",
            ]
            for name, figures in results.items()
        ],
    )
    ceiling = results[CEILING]["median_ms"]
    fluid = results[FLUID]["median_ms"]
    print(f"fairness / plain per-user SUM (same run): {fluid / ceiling:,.1f}x (target <= 2x)")
    if PANELS in results:
        # An open page, per minute: both parts at every refresh before they had their own
        # clocks; now the live part at every refresh and the hour's on its slower clock.
        refreshes = 60 / settings.ZYPHER_DASHBOARD_REFRESH_SECONDS
        hour_refreshes = 60 / settings.ZYPHER_DASHBOARD_HOUR_REFRESH_SECONDS
        whole = refreshes * results[PANELS]["median_ms"]
        split = (
            refreshes * results[LIVE_PANELS]["median_ms"]
            + hour_refreshes * results[HOUR_PANELS]["median_ms"]
        )
        print(
            f"an open dashboard, per minute (refresh every "
            f"{settings.ZYPHER_DASHBOARD_REFRESH_SECONDS:g} s, the hour every "
            f"{settings.ZYPHER_DASHBOARD_HOUR_REFRESH_SECONDS:g} s): {split:,.0f} ms of work, "
            f"against {whole:,.0f} ms refreshing everything each time ({whole / split:.1f}x less)"
        )
        print(
            f"a refresh (live part) / all figures: "
            f"{results[LIVE_PANELS]['median_ms'] / results[PANELS]['median_ms']:.2f}"
        )
    if BASELINE in results:
        old = results[BASELINE]["median_ms"]
        print(f"baseline fairness / plain per-user SUM (same run): {old / ceiling:,.1f}x")
    path = write_results(
        "dashboard",
        {"rows": filled, "repeats": repeats, "results": results, "fairness_ratio": fluid / ceiling},
    )
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
