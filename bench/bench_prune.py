"""Retention under load: a dispatcher prunes a million ended jobs while it serves the queue.

    python tests/support/pgcluster.py --durable -- .venv/bin/python -m bench.bench_prune [--count N]

Needs PostgreSQL (DATABASE_URL). The jobs table gets `--count` (default 1,000,000) jobs
that ended 40 days ago and a backlog of queued no-op `stamp` jobs, both with INSERT ...
SELECT generate_series. One real `run_dispatcher` (one device) serves the backlog with
ZYPHER_PRUNE_AFTER_SECONDS set: its first periodic prune starts after an idle phase, so
the device's idle gap (end of one job to start of the next) is measured first without and
then during pruning, in the same process, next to a `SELECT 1` round trip sampled in both
phases (the machine is shared). Prints a table and writes bench/results/prune.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS,
    log,
    print_table,
    setup_django,
    subprocess_env,
    summary_ms,
    write_results,
)

setup_django()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from bench.bench_core import (  # noqa: E402
    fill_backlog,
    gaps_from_stamps,
    sample_round_trips,
)
from tests.support.processes import ServiceProcess, wait_until  # noqa: E402

IDLE_SECONDS = 15.0
BATCH_SIZE = 500  # the dispatcher's default ZYPHER_PRUNE_BATCH_SIZE


def insert_ended_jobs(count: int) -> int:
    """`count` succeeded jobs of user 1 that ended 40 days ago (a millisecond apart, the
    oldest with the highest id); returns the id of the oldest, which the prune takes first."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_job (public_id, owner_id, kind, input, device_type, priority, status,
                                  result, error, created_at, started_at, finished_at, device,
                                  attempts, charged_cost, charged_weight, duration, cancelled_by,
                                  size)
            SELECT gen_random_uuid(), 1, 'stamp', '0'::jsonb, 'cpu', 0, 'succeeded', 'null'::jsonb,
                   '', f - interval '1 second', f - interval '1 second', f, 'old-device', 1,
                   1, 1, 1.0, '', 0
            FROM (SELECT g, now() - interval '40 days' - g * interval '1 millisecond' AS f
                  FROM generate_series(1, %s) AS g) AS ended
            RETURNING id
            """,
            [count],
        )
        oldest = max(row[0] for row in cursor.fetchall())
        cursor.execute("ANALYZE jobs_job")
    return oldest


def exists(job_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM jobs_job WHERE id = %s)", [job_id])
        return bool(cursor.fetchone()[0])


def ended_left() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM jobs_job WHERE device = 'old-device'")
        return int(cursor.fetchone()[0])


def bench_prune(count: int) -> dict[str, Any]:
    # Enough backlog that the device never runs dry while the prune runs.
    backlog = max(50_000, count // 3)
    log(f"prune: {backlog:,} queued stamp jobs over 100 users, {count:,} ended jobs")
    fill_backlog(100, backlog, kind="stamp")
    started = time.perf_counter()
    oldest = insert_ended_jobs(count)
    log(f"prune: ended jobs inserted in {time.perf_counter() - started:.1f}s")
    stamps = Path(tempfile.mkdtemp(prefix="zypher-bench-")) / "stamps.log"
    stamps.touch()
    connection.close()
    env = subprocess_env(
        ZYPHER_BENCH_STAMPS=str(stamps),
        ZYPHER_PRUNE_AFTER_SECONDS=str(30 * 86400),
        ZYPHER_PRUNE_BATCH_SIZE=str(BATCH_SIZE),
        # The first prune starts after the warm-up and the idle phase.
        ZYPHER_PRUNE_INTERVAL_SECONDS=str(IDLE_SECONDS + 10),
    )
    dispatcher = ServiceProcess(
        "prune-dispatcher",
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
        # The prune's first batch deletes the oldest job: until then the phase is idle.
        wait_until(lambda: not exists(oldest), 120, "the prune to start", interval=0.1)
        prune_from = time.time()
        done.set()
        sampler.join()
        idle_until = prune_from
        log("prune: started")
        prune_rtt: list[float] = []
        done = threading.Event()
        sampler = threading.Thread(target=sample_round_trips, args=(done, prune_rtt))
        sampler.start()
        wait_until(
            lambda: "pruned" in dispatcher.log_text(), 3600, "the prune to end", interval=0.2
        )
        prune_until = time.time()
        done.set()
        sampler.join()
    finally:
        dispatcher.stop()
    left = ended_left()
    idle = gaps_from_stamps(stamps, idle_from, idle_until)
    during = gaps_from_stamps(stamps, prune_from, prune_until)
    return {
        "ended_jobs": count,
        "batch_size": BATCH_SIZE,
        "ended_left": left,
        "prune_seconds": prune_until - prune_from,
        "prune_jobs_per_s": (count - left) / (prune_until - prune_from),
        "idle_gap": summary_ms(idle),
        "prune_gap": summary_ms(during),
        "idle_select_1_ms": summary_ms(idle_rtt)["median_ms"],
        "prune_select_1_ms": summary_ms(prune_rtt)["median_ms"],
        "jobs_run_idle": len(idle),
        "jobs_run_during_prune": len(during),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="ended jobs to prune")
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        print(
            "bench_prune needs PostgreSQL: run it through `make bench` (tests/support/pgcluster.py)",
            file=sys.stderr,
        )
        return 2
    call_command("migrate", verbosity=0)
    result = bench_prune(options.count)
    idle, during = result["idle_gap"], result["prune_gap"]
    print_table(
        f"Device idle gap while a dispatcher prunes {result['ended_jobs']:,} ended jobs "
        f"({result['batch_size']} per transaction, in its own thread and connection); "
        "no-op handler, 1 device; the ceiling: a SELECT 1 round trip sampled in the same phase.",
        ["phase", "gaps", "median ms", "p99 ms", "SELECT 1 ms", "median / SELECT 1"],
        [
            [
                name,
                f"{gaps['n']:,}",
                gaps["median_ms"],
                gaps["p99_ms"],
                rtt,
                f"{gaps['median_ms'] / rtt:.1f}",
            ]
            for name, gaps, rtt in (
                ("idle (no prune)", idle, result["idle_select_1_ms"]),
                ("during the prune", during, result["prune_select_1_ms"]),
            )
        ],
    )
    print(
        f"prune: {result['ended_jobs'] - result['ended_left']:,} jobs in "
        f"{result['prune_seconds']:.1f}s = {result['prune_jobs_per_s']:,.0f} jobs/s "
        f"({result['ended_left']:,} left); gap during prune vs idle: median "
        f"{during['median_ms'] / idle['median_ms']:.2f}x, p99 "
        f"{during['p99_ms'] / idle['p99_ms']:.2f}x",
        flush=True,
    )
    path = write_results("prune", result)
    log(f"wrote {path}")
    return 0 if result["ended_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
