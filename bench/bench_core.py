"""Core performance: submit, bulk submit, the claim at any backlog, the device's idle gap.

    python tests/support/pgcluster.py --durable -- .venv/bin/python -m bench.bench_core [--quick]

Needs PostgreSQL (DATABASE_URL). Every figure stands next to a ceiling measured in the
same run (a trivial JSON view, a `SELECT 1` round trip), since the machine is shared.
Prints tables and writes bench/results/core.json.
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import (  # noqa: E402
    RESULTS,
    log,
    print_table,
    reset_tables,
    setup_django,
    subprocess_env,
    summary_ms,
    write_results,
)

setup_django()

import requests  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from jobs.queue import claim_next, finish_job  # noqa: E402
from tests.support.processes import ServiceProcess, start_gateway, wait_until  # noqa: E402

# --- filling the tables fast --------------------------------------------------------


def fill_backlog(users: int, jobs: int, kind: str = "noop") -> None:
    """`jobs` queued jobs spread over `users` users, with INSERT ... SELECT (no Python loop)."""
    reset_tables()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_user (password, is_superuser, username, first_name, last_name, email,
                                   is_staff, is_active, date_joined, weight)
            SELECT '', false, 'bench' || g, '', '', '', false, true, now(), 1 + (g %% 5)
            FROM generate_series(1, %s) AS g
            """,
            [users],
        )
        cursor.execute(
            "INSERT INTO jobs_fairpool (device_type, virtual_time, cost_estimate) VALUES ('cpu', 0, 0.001)"
        )
        cursor.execute(
            """
            INSERT INTO jobs_job (public_id, owner_id, kind, input, device_type, priority, status,
                                  error, created_at, device, attempts, charged_cost, charged_weight,
                                  cancelled_by, size)
            SELECT gen_random_uuid(), 1 + (g %% %s), %s, '0'::jsonb, 'cpu', (g %% 7) - 3, 'queued',
                   '', now(), '', 0, 0, 1, '', 0
            FROM generate_series(0, %s - 1) AS g
            """,
            [users, kind, jobs],
        )
        cursor.execute(
            """
            INSERT INTO jobs_fairshareaccount (pool_id, user_id, virtual_time, queued_count,
                                               running_count, served_seconds)
            SELECT 1, owner_id, random(), count(*), 0, 0 FROM jobs_job GROUP BY owner_id
            """
        )
        cursor.execute("ANALYZE jobs_job")
        cursor.execute("ANALYZE jobs_fairshareaccount")
        cursor.execute("ANALYZE jobs_user")


def select_one_round_trips(count: int = 2000) -> list[float]:
    times = []
    with connection.cursor() as cursor:
        for _ in range(count):
            started = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            times.append(time.perf_counter() - started)
    return times


# --- the claim at any backlog ----------------------------------------------------------


def time_claims(count: int) -> dict[str, float]:
    """Claim and settle `count` jobs, each next to a SELECT 1 timed just before it."""
    claims, settles, round_trips = [], [], []
    with connection.cursor() as cursor:
        for _ in range(count):
            started = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            round_trips.append(time.perf_counter() - started)
            started = time.perf_counter()
            claim = claim_next("cpu", "bench-device")
            claimed = time.perf_counter()
            assert claim is not None
            finish_job(claim, succeeded=True, duration=0.001, result=None)
            settles.append(time.perf_counter() - claimed)
            claims.append(claimed - started)
    return {
        **{f"claim_{k}": v for k, v in summary_ms(claims).items()},
        **{f"settle_{k}": v for k, v in summary_ms(settles).items() if k != "n"},
        "select_1_median_ms": summary_ms(round_trips)["median_ms"],
    }


def sample_round_trips(until: threading.Event, into: list[float]) -> None:
    """SELECT 1 every 20 ms until `until` is set (runs in its own thread and connection)."""
    try:
        while not until.is_set():
            into += select_one_round_trips(1)
            until.wait(0.02)
    finally:
        connection.close()


def bench_claim(quick: bool) -> dict[str, Any]:
    big = 100_000 if quick else 1_000_000
    cases = [(1_000, 10), (big, 10), (10_000, 10_000), (big, 10_000)]
    results = {}
    for jobs, users in cases:
        log(f"claim: filling {jobs:,} queued jobs over {users:,} users")
        started = time.monotonic()
        fill_backlog(users, jobs)
        log(f"claim: filled in {time.monotonic() - started:.1f}s; timing 300 claims")
        time_claims(20)  # warm caches
        results[f"{jobs}x{users}"] = {"jobs": jobs, "users": users, **time_claims(300)}
    return results


# --- HTTP: submit next to a trivial view -----------------------------------------------


def http_worker(
    url: str, body_kind: str, seconds: float, worker: int, out: Any, lean: bool = False
) -> None:
    try:
        send = lean_http_requests if lean else http_requests
        out.put(send(url, body_kind, seconds, worker))
    except Exception as exc:  # report instead of leaving the parent waiting
        out.put(exc)


def lean_send(conn: http.client.HTTPConnection, path: str, body: bytes | None) -> bytes:
    """One request on a kept-alive http.client connection: GET `path`, or POST `body` as
    JSON; the answer's body, or RuntimeError unless it is a 200 or 201."""
    if body is None:
        conn.request("GET", path)
    else:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status not in (200, 201):
        raise RuntimeError(f"{path}: {response.status} {payload[:200]!r}")
    return payload


def lean_http_requests(
    url: str, body_kind: str, seconds: float, worker: int
) -> tuple[list[float], int]:
    """`http_requests` for health and single submits from the standard library's http.client
    on one kept-alive connection: about a tenth of `requests`' CPU a request, so that on a
    machine shared with the server the clients take less of its cores."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    latencies = []
    deadline = time.monotonic() + seconds
    index = 0
    try:
        while time.monotonic() < deadline:
            index += 1
            body = None
            if body_kind != "health":
                user = f"user{(worker * 7919 + index) % 100}"
                body = json.dumps({"user_id": user, "kind": "noop", "input": index}).encode()
            started = time.perf_counter()
            lean_send(conn, "/api/health/" if body is None else "/api/jobs/", body)
            latencies.append(time.perf_counter() - started)
    finally:
        conn.close()
    return latencies, 0 if body_kind == "health" else len(latencies)


def http_requests(url: str, body_kind: str, seconds: float, worker: int) -> tuple[list[float], int]:
    session = requests.Session()
    latencies = []
    jobs = 0
    deadline = time.monotonic() + seconds
    index = 0
    while time.monotonic() < deadline:
        index += 1
        user = f"user{(worker * 7919 + index) % 100}"
        started = time.perf_counter()
        if body_kind == "health":
            response = session.get(url + "/api/health/", timeout=30)
            count = 0
        elif body_kind == "submit":
            body: dict[str, Any] = {"user_id": user, "kind": "noop", "input": index}
            response = session.post(url + "/api/jobs/", json=body, timeout=30)
            count = 1
        else:
            batch: list[dict[str, Any]] = [{"user_id": user, "kind": "noop", "input": index}] * 500
            response = session.post(url + "/api/jobs/", json=batch, timeout=60)
            count = 500
        latencies.append(time.perf_counter() - started)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"{body_kind}: {response.status_code} {response.text[:200]}")
        jobs += count
    return latencies, jobs


def http_load(
    url: str, kind: str, seconds: float, clients: int, lean: bool = False
) -> dict[str, float]:
    """`clients` processes sending `kind` requests for `seconds` (with `lean`, from
    http.client instead of `requests`: health and single submits only)."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [
        context.Process(target=http_worker, args=(url, kind, seconds, n, out, lean))
        for n in range(clients)
    ]
    for process in workers:
        process.start()
    latencies: list[float] = []
    jobs = 0
    for _ in workers:
        reported = out.get(timeout=seconds + 120)
        if isinstance(reported, Exception):
            raise RuntimeError(f"an HTTP client failed: {reported}")
        worker_latencies, worker_jobs = reported
        latencies += worker_latencies
        jobs += worker_jobs
    for process in workers:
        process.join()
    return {
        "requests_per_s": len(latencies) / seconds,
        "jobs_per_s": jobs / seconds,
        **summary_ms(latencies),
    }


def bench_http(url: str, quick: bool) -> dict[str, Any]:
    seconds = 3.0 if quick else 6.0
    clients = 4
    rounds: dict[str, list[dict[str, float]]] = {"health": [], "submit": [], "bulk": []}
    connection.close()  # the forked clients must not share this process's connection
    for round_number in range(2):
        for kind in ("health", "submit", "bulk"):
            log(f"http: round {round_number + 1}, {kind}, {clients} clients for {seconds:.0f}s")
            rounds[kind].append(http_load(url, kind, seconds, clients))
    best = {
        kind: max(results, key=lambda r: r["jobs_per_s"] or r["requests_per_s"])
        for kind, results in rounds.items()
    }
    return best


# --- the device's idle gap, idle and under a burst ------------------------------------


def gaps_from_stamps(path: Path, since: float = 0.0, until: float = float("inf")) -> list[float]:
    stamps = []
    for line in path.read_text().splitlines():
        _, start, end = line.split()
        stamps.append((float(start), float(end)))
    stamps.sort()
    return [
        nxt[0] - cur[1]
        for cur, nxt in zip(stamps, stamps[1:], strict=False)
        if cur[1] >= since and nxt[0] <= until
    ]


# Where one gap goes: between each pair of successive points, from the job's end stamp
# (the handler) to the next job's start stamp, through the dispatcher's trace
# (devices.dispatcher.loop, ZYPHER_BENCH_GAP_TRACE: pipe readable, settle task running,
# call issued, call answered, back on the loop, order sent). The next job is the first
# that started after the dispatcher was back on the loop, not after its order-sent stamp:
# the woken worker often runs its handler before the dispatcher, preempted by it, takes
# that stamp, and matching from there paired most gaps with the job after the next.
GAP_SEGMENTS = [
    "worker: handler end -> outcome on the pipe, loop sees it readable",
    "loop: readable -> settle task running",
    "hop: settle task -> call issued (the database thread's hop before issue 16)",
    "settle-and-claim call (Django or psycopg, PostgreSQL)",
    "hop: call answered -> back on the loop (the thread's hop back before issue 16)",
    "loop -> worker: order built and sent, worker woken, next handler start",
]
TRACE_POINTS = 6  # stamps per settle in the dispatcher's trace


def gap_breakdown(
    stamps: Path, trace: Path, since: float, until: float
) -> dict[str, dict[str, float]]:
    runs = sorted(tuple(map(float, line.split()[1:])) for line in stamps.read_text().splitlines())
    starts, ends = [run[0] for run in runs], [run[1] for run in runs]
    segments: dict[str, list[float]] = {name: [] for name in GAP_SEGMENTS}
    for line in trace.read_text().splitlines() if trace.exists() else []:
        points = [float(field) for field in line.split()]
        # (A settle retried while the database was away has more stamps: not a drain's gap.)
        if len(points) != TRACE_POINTS or not since <= points[0] <= until:
            continue
        back_on_loop = points[4]
        ended = bisect.bisect_right(ends, points[0]) - 1  # one device: the job just ended
        following = bisect.bisect_left(starts, back_on_loop)
        if ended < 0 or following >= len(starts):
            continue
        points = [ends[ended], *points[:5], starts[following]]
        for name, a, b in zip(GAP_SEGMENTS, points[:-1], points[1:], strict=True):
            segments[name].append(b - a)
    return {name: summary_ms(values) for name, values in segments.items() if values}


def burst_submitter(url: str, jobs: int, worker: int, out: Any) -> None:
    try:
        out.put(burst_requests(url, jobs, worker))
    except Exception as exc:
        out.put(exc)


def burst_requests(url: str, jobs: int, worker: int) -> list[float]:
    session = requests.Session()
    latencies = []
    for start in range(0, jobs, 100):
        user = f"burst{(worker * 31 + start // 100) % 1000}"
        body: list[dict[str, Any]] = [
            {"user_id": user, "kind": "stamp", "input": n}
            for n in range(start, min(jobs, start + 100))
        ]
        started = time.perf_counter()
        response = session.post(url + "/api/jobs/", json=body, timeout=60)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 201:
            raise RuntimeError(f"burst: {response.status_code} {response.text[:200]}")
    return latencies


def bench_gap(url: str, quick: bool) -> dict[str, Any]:
    backlog = 20_000 if quick else 100_000
    burst = 20_000 if quick else 100_000
    log(f"gap: filling {backlog:,} queued stamp jobs over 1,000 users")
    fill_backlog(1_000, backlog, kind="stamp")
    stamps = Path(tempfile.mkdtemp(prefix="zypher-bench-")) / "stamps.log"
    stamps.touch()
    trace = stamps.with_name("trace.log")
    connection.close()
    env = subprocess_env(ZYPHER_BENCH_STAMPS=str(stamps), ZYPHER_BENCH_GAP_TRACE=str(trace))
    dispatcher = ServiceProcess(
        "dispatcher",
        [sys.executable, "manage.py", "run_dispatcher", "--devices", "1", "--name", "bench"],
        env,
        RESULTS,
    )
    try:
        wait_until(
            lambda: len(stamps.read_text().splitlines()) > 200, 60, "the dispatcher to run jobs"
        )
        idle_from = time.time()
        idle_rtt: list[float] = []
        done = threading.Event()
        sampler = threading.Thread(target=sample_round_trips, args=(done, idle_rtt))
        sampler.start()
        time.sleep(8 if quick else 15)
        done.set()
        sampler.join()
        idle_until = time.time()
        log(f"gap: burst of {burst:,} jobs (lists of 100) from 4 clients while the device runs")
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        clients = [
            context.Process(target=burst_submitter, args=(url, burst // 4, n, out))
            for n in range(4)
        ]
        burst_from = time.time()
        for process in clients:
            process.start()
        burst_rtt: list[float] = []
        done = threading.Event()
        sampler = threading.Thread(target=sample_round_trips, args=(done, burst_rtt))
        sampler.start()
        latencies: list[float] = []
        for _ in clients:
            reported = out.get(timeout=600)
            if isinstance(reported, Exception):
                raise RuntimeError(f"a burst client failed: {reported}")
            latencies += reported
        for process in clients:
            process.join()
        burst_until = time.time()
        done.set()
        sampler.join()
    finally:
        dispatcher.stop()
    idle = gaps_from_stamps(stamps, idle_from, idle_until)
    during = gaps_from_stamps(stamps, burst_from, burst_until)
    return {
        "idle_breakdown": gap_breakdown(stamps, trace, idle_from, idle_until),
        "idle_gap": summary_ms(idle),
        "burst_gap": summary_ms(during),
        "idle_select_1_ms": summary_ms(idle_rtt)["median_ms"],
        "burst_select_1_ms": summary_ms(burst_rtt)["median_ms"],
        "burst_jobs_per_s": burst / (burst_until - burst_from),
        "burst_request_ms": summary_ms(latencies),
        "jobs_run_per_s_idle": len(idle) / (idle_until - idle_from),
    }


# --- the report ---------------------------------------------------------------------------


def print_gap(gap: dict[str, Any], rtt_ms: float) -> None:
    idle, during = gap["idle_gap"], gap["burst_gap"]
    print_table(
        "Device idle gap (end of one job to start of the next; no-op handler, 1 device). "
        "Ceilings: SELECT 1 sampled every 20 ms during the same window (a lone round trip, "
        "as the dispatcher's is) and in a tight loop",
        ["phase", "gaps", "median ms", "p99 ms", "SELECT 1 sampled ms", "median RTTs"]
        + ["p99 RTTs", "median tight-loop RTTs"],
        [
            [
                phase,
                figures["n"],
                figures["median_ms"],
                figures["p99_ms"],
                window_rtt,
                figures["median_ms"] / window_rtt,
                figures["p99_ms"] / window_rtt,
                figures["median_ms"] / rtt_ms,
            ]
            for phase, figures, window_rtt in (
                ("backlog only", idle, gap["idle_select_1_ms"]),
                ("during burst", during, gap["burst_select_1_ms"]),
            )
        ],
    )
    print(
        f"burst: {gap['burst_jobs_per_s']:,.0f} jobs/s submitted in lists of 100; "
        f"request median {gap['burst_request_ms']['median_ms']:.1f} ms, p99 {gap['burst_request_ms']['p99_ms']:.1f} ms"
    )
    print(f"gap during burst vs idle: {during['median_ms'] / idle['median_ms']:.2f}x")
    window_rtt = gap["idle_select_1_ms"]
    if not gap["idle_breakdown"]:
        return  # a dispatcher without the trace (an older commit, for a before/after run)
    print_table(
        "Where the idle gap goes (median of each part, backlog only; the parts' medians "
        "need not add up to the gap's)",
        ["part", "median ms", "p99 ms", "lone SELECT 1 RTTs"],
        [
            [name, part["median_ms"], part["p99_ms"], part["median_ms"] / window_rtt]
            for name, part in gap["idle_breakdown"].items()
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller tables and shorter runs (a smoke test)"
    )
    parser.add_argument(
        "--gap-only", action="store_true", help="only the device idle gap and its breakdown"
    )
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        print(
            "bench_core needs PostgreSQL: run it through `make bench` (tests/support/pgcluster.py)",
            file=sys.stderr,
        )
        return 2
    call_command("migrate", verbosity=0)
    rtt = summary_ms(select_one_round_trips())
    log(f"SELECT 1 round trip: median {rtt['median_ms']:.3f} ms")

    reset_tables()
    gateway, url = start_gateway(subprocess_env(), RESULTS)
    try:
        http = None if options.gap_only else bench_http(url, options.quick)
        gap = bench_gap(url, options.quick)
    finally:
        gateway.stop()
    claim = None if options.gap_only else bench_claim(options.quick)
    rtt_after = summary_ms(select_one_round_trips())
    rtt_ms = (rtt["median_ms"] + rtt_after["median_ms"]) / 2
    print_gap(gap, rtt_ms)
    if http is None or claim is None:
        return 0

    health, submit, bulk = http["health"], http["submit"], http["bulk"]
    print_table(
        "HTTP through gunicorn (4 client processes; ceiling: the trivial /api/health/ view)",
        [
            "endpoint",
            "req/s",
            "jobs/s",
            "median ms",
            "p99 ms",
            "vs ceiling (req/s)",
            "p99 vs ceiling",
        ],
        [
            [
                "GET /api/health/",
                health["requests_per_s"],
                0,
                health["median_ms"],
                health["p99_ms"],
                1.0,
                1.0,
            ],
            [
                "POST /api/jobs/ (1 job)",
                submit["requests_per_s"],
                submit["jobs_per_s"],
                submit["median_ms"],
                submit["p99_ms"],
                submit["requests_per_s"] / health["requests_per_s"],
                submit["p99_ms"] / health["p99_ms"],
            ],
            [
                "POST /api/jobs/ (list of 500)",
                bulk["requests_per_s"],
                bulk["jobs_per_s"],
                bulk["median_ms"],
                bulk["p99_ms"],
                bulk["jobs_per_s"] / submit["jobs_per_s"],
                "(jobs/s vs single)",
            ],
        ],
    )
    print_table(
        "Claim and settle transactions (in-process; each next to a SELECT 1 timed just before it)",
        ["queued jobs", "users", "claim median ms", "claim p99 ms", "settle median ms"]
        + ["SELECT 1 ms", "claim in RTTs"],
        [
            [
                f"{c['jobs']:,}",
                f"{c['users']:,}",
                c["claim_median_ms"],
                c["claim_p99_ms"],
                c["settle_median_ms"],
                c["select_1_median_ms"],
                c["claim_median_ms"] / c["select_1_median_ms"],
            ]
            for c in claim.values()
        ],
    )
    keys = list(claim)
    small, large = claim[keys[0]], claim[keys[-1]]
    print(
        f"claim, largest vs smallest case: {large['claim_median_ms'] / small['claim_median_ms']:.2f}x"
    )
    path = write_results(
        "core",
        {"select_1_ms": rtt_ms, "http": http, "claim": claim, "gap": gap, "quick": options.quick},
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
