"""Scale-out: settle-and-claim throughput of ONE pool with 1, 2 and 4 dispatcher processes.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.bench_scale_out [--seconds 10]

Needs PostgreSQL (DATABASE_URL). Each round fills the same backlog (20,000 queued jobs
over 50 users, one pool) and starts N processes (spawn context, one connection each)
that do what a dispatcher's devices do between no-op jobs: `finish_and_claim_next` in a
loop for `--seconds`. Several dispatchers of one pool serialise on its row (the fair order
is exact across them), so the most to hope for is that throughput holds up as they are
added; what must never happen is a deadlock (SQLSTATE 40P01), counted per round next to
the server's own deadlock counter. The ceiling, measured in the same run with the same
N processes: `SELECT 1` round trips per second. Prints a table, writes
bench/results/scale_out.json, and exits 1 if any process saw a deadlock or an error.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections import Counter
from typing import Any

from bench.common import log, print_table, setup_django, write_results

setup_django()

from django.core.management import call_command  # noqa: E402
from django.db import DatabaseError, connection  # noqa: E402

from bench.bench_core import fill_backlog  # noqa: E402
from tests.support.torture import DEADLOCK, sqlstate  # noqa: E402

POOL = "cpu"  # the pool bench_core.fill_backlog fills
DISPATCHERS = (1, 2, 4)


def worker(mode: str, name: str, seconds: float, ready: Any, start: Any, out: Any) -> None:
    """One dispatcher process (or, for the ceiling, a `SELECT 1` loop) for `seconds`."""
    try:
        setup_django()
        connection.ensure_connection()
        ready.put(name)
        start.wait(120)
        out.put(settle_loop(name, seconds) if mode == "settle" else select_one_loop(seconds))
    except BaseException as exc:  # the parent reports it instead of waiting for ever
        out.put({"crashed": f"{name}: {type(exc).__name__}: {exc}"})
        raise


def settle_loop(name: str, seconds: float) -> dict[str, Any]:
    from jobs.queue import claim_next, finish_and_claim_next

    counts: Counter[str] = Counter()
    claim = None
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        try:
            if claim is None:
                claim = claim_next(POOL, name)
                if claim is None:
                    counts["backlog_exhausted"] += 1
                    break
                continue
            accepted, claim = finish_and_claim_next(claim, name, succeeded=True, duration=0.001)
            counts["settled" if accepted else "fenced"] += 1
        except DatabaseError as exc:
            counts["deadlocks" if sqlstate(exc) == DEADLOCK else "errors"] += 1
            claim = None  # rolled back: its lease hands the job back
    return {**counts, "elapsed": time.monotonic() - started}


def select_one_loop(seconds: float) -> dict[str, Any]:
    count = 0
    started = time.monotonic()
    with connection.cursor() as cursor:
        while time.monotonic() - started < seconds:
            cursor.execute("SELECT 1")
            cursor.fetchone()
            count += 1
    return {"round_trips": count, "elapsed": time.monotonic() - started}


def run_processes(mode: str, processes: int, seconds: float) -> list[dict[str, Any]]:
    """Start `processes` workers, release them together once all are connected."""
    context = multiprocessing.get_context("spawn")
    ready, out, start = context.Queue(), context.Queue(), context.Event()
    workers = [
        context.Process(
            target=worker,
            args=(mode, f"{mode}{n}", seconds, ready, start, out),
            daemon=True,
        )
        for n in range(processes)
    ]
    connection.close()
    try:
        for process in workers:
            process.start()
        for _ in workers:
            ready.get(timeout=120)
        start.set()
        results = [out.get(timeout=seconds + 120) for _ in workers]
    finally:
        for process in workers:
            process.join(10)
            if process.is_alive():
                process.kill()
    crashed = [r["crashed"] for r in results if "crashed" in r]
    if crashed:
        raise RuntimeError(f"worker processes crashed: {crashed}")
    return results


def server_deadlocks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def measure(processes: int, seconds: float, jobs: int, users: int) -> dict[str, Any]:
    log(f"{processes} dispatcher(s): ceiling, SELECT 1 from {processes} process(es)")
    ceiling = run_processes("select", processes, min(seconds, 3.0))
    round_trips = sum(r["round_trips"] for r in ceiling) / max(r["elapsed"] for r in ceiling)
    log(f"{processes} dispatcher(s): filling {jobs:,} queued jobs over {users} users")
    fill_backlog(users, jobs, kind="noop")
    deadlocks_before = server_deadlocks()
    log(f"{processes} dispatcher(s): finish_and_claim_next for {seconds:g}s")
    results = run_processes("settle", processes, seconds)
    time.sleep(1)  # the server's statistics are flushed about once a second
    total: Counter[str] = Counter()
    for result in results:
        total.update({k: v for k, v in result.items() if k != "elapsed"})
    elapsed = max(result["elapsed"] for result in results)
    return {
        "dispatchers": processes,
        "jobs_per_s": total["settled"] / elapsed,
        "settled": total["settled"],
        "elapsed_s": elapsed,
        "deadlocks": total["deadlocks"],
        "server_deadlocks": server_deadlocks() - deadlocks_before,
        "errors": total["errors"],
        "fenced": total["fenced"],
        "backlog_exhausted": bool(total["backlog_exhausted"]),
        "select_1_per_s": round_trips,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per round")
    parser.add_argument("--jobs", type=int, default=20_000, help="queued at the start of a round")
    parser.add_argument("--users", type=int, default=50)
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        print("bench_scale_out needs PostgreSQL: run it through `make bench`", file=sys.stderr)
        return 2
    call_command("migrate", verbosity=0)
    rounds = [measure(n, options.seconds, options.jobs, options.users) for n in DISPATCHERS]
    one = rounds[0]["jobs_per_s"] or float("nan")
    print_table(
        f"Settle and claim on one pool ({options.jobs:,} queued jobs over {options.users} users, "
        f"no-op work, {options.seconds:g}s per round). Ceiling: SELECT 1 round trips/s "
        "from the same number of processes",
        ["dispatchers", "jobs/s", "vs 1 dispatcher", "deadlocks", "server deadlocks", "errors"]
        + ["SELECT 1/s", "jobs per SELECT 1"],
        [
            [
                r["dispatchers"],
                r["jobs_per_s"],
                r["jobs_per_s"] / one,
                r["deadlocks"],
                r["server_deadlocks"],
                r["errors"],
                r["select_1_per_s"],
                r["jobs_per_s"] / r["select_1_per_s"],
            ]
            for r in rounds
        ],
    )
    if any(r["backlog_exhausted"] for r in rounds):
        print("note: the backlog ran out in a round (raise --jobs): its jobs/s is a lower bound")
    path = write_results(
        "scale_out",
        {
            "jobs": options.jobs,
            "users": options.users,
            "seconds": options.seconds,
            "rounds": rounds,
        },
    )
    print(f"results: {path}")
    failed = sum(r["deadlocks"] + r["errors"] for r in rounds)
    if failed:
        print(f"FAILED: {failed} deadlocks or errors in the dispatchers", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
