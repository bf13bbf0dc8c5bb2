"""Zypher next to pgqueuer and procrastinate: the same enqueue and drain workloads, on the
same throwaway PostgreSQL, in the same run.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.bench_peers [--quick]

The peers are installed by this bench into its own virtual environment
(var/bench-peers-venv, pinned below; never the project's dependencies) and driven by
bench/peers_driver.py there. Workloads, alike for all three:

- enqueue, single: SINGLE jobs, one call (one transaction) each, one client in process;
- enqueue, bulk: BULK jobs in lists of BATCH;
- drain: every job just enqueued (SINGLE + BULK no-op jobs), at most 2 jobs running at
  once, each claimed and ended in a transaction of its own, timed for all three from the
  first job's start to the last one's end. Zypher: `manage.py run_dispatcher --devices 2`
  (its jobs' started_at and finished_at). pgqueuer: its worker in drain mode with
  `max_concurrent_tasks=2` and `batch_size=1` (its default, batches of 10 and no cap,
  takes 10 jobs per dequeue, runs all at once and writes their ends 10 at a time: not
  this workload), once with its default poll interval and once with a short one (at its
  cap it waits for a NOTIFY or the poll before it looks for the next job; see
  bench/peers_driver.py); the better of the two is the ratio's peer. procrastinate:
  `run_worker_async(concurrency=2, wait=False)`. Their no-op handlers note the span.
- where Zypher's drain time goes: the settle-and-claim call in process, a hop to a
  database thread and back, a job's round trip over a worker's pipe, and `SELECT 1`,
  each timed alone next to the drain's time per job and device ("slot-ms").

Prints each figure with Zypher's ratio to it and writes bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS,
    ROOT,
    log,
    print_table,
    setup_django,
    subprocess_env,
    write_results,
)

setup_django()

from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from functools import partial  # noqa: E402

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Max, Min  # noqa: E402

from bench.bench_core import reset_tables, select_one_round_trips  # noqa: E402
from bench.common import summary_ms  # noqa: E402
from devices.dispatcher.worker import JobOrder, worker_main  # noqa: E402
from jobs.models import Job, JobStatus, User  # noqa: E402
from jobs.queue import JobSpec, claim_next, finish_and_claim_next, submit_jobs  # noqa: E402
from jobs.results import settle_outcome  # noqa: E402
from tests.support.processes import ServiceProcess, wait_until  # noqa: E402

PEERS_VENV = ROOT / "var" / "bench-peers-venv"
PEER_PACKAGES = [
    "pgqueuer==1.6.0",
    "procrastinate==3.10.0",
    "asyncpg==0.32.0",
    "psycopg[binary]==3.3.9",
    "psycopg-pool==3.3.3",
]
DEVICES = 2
# (label, driver, pgqueuer's poll interval while it holds DEVICES jobs, seconds)
PEERS = (
    ("pgqueuer", "pgqueuer", 0.001),
    ("pgqueuer, default poll", "pgqueuer", 0.1),
    ("procrastinate", "procrastinate", 0.1),
)


def peers_python() -> Path:
    """The peers' virtual environment, created and filled on first use."""
    python = PEERS_VENV / "bin" / "python"
    marker = PEERS_VENV / ".installed"
    if not marker.exists() or marker.read_text() != "\n".join(PEER_PACKAGES):
        log(f"peers: installing {', '.join(PEER_PACKAGES)} into {PEERS_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
        marker.write_text("\n".join(PEER_PACKAGES))
    return python


def run_peer(
    python: Path, peer: str, single: int, bulk: int, batch: int, poll: float
) -> dict[str, float]:
    dsn = os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    log(
        f"{peer}: {single:,} single, {bulk:,} in lists of {batch}, drain with {DEVICES} "
        f"(poll {poll} s)"
    )
    done = subprocess.run(
        [str(python), str(ROOT / "bench" / "peers_driver.py"), peer, dsn]
        + [str(single), str(bulk), str(batch), str(DEVICES), str(poll)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{peer} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["left_queued"]:
        raise RuntimeError(f"{peer} left {figures['left_queued']} jobs queued")
    return figures


def run_zypher(single: int, bulk: int, batch: int) -> dict[str, float]:
    reset_tables()
    owner, _ = User.objects.get_or_create(username="bench-peers")
    spec = JobSpec(kind="noop", input=0, device_type="cpu")
    log(f"zypher: {single:,} single, {bulk:,} in lists of {batch}, drain with {DEVICES}")
    figures: dict[str, float] = {}
    started = time.perf_counter()
    for _ in range(single):
        submit_jobs(owner, [spec])
    figures["enqueue_single"] = single / (time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, bulk, batch):
        submit_jobs(owner, [spec] * min(batch, bulk - start))
    figures["enqueue_bulk"] = bulk / (time.perf_counter() - started)
    connection.close()
    dispatcher = ServiceProcess(
        "dispatcher-peers",
        [sys.executable, "manage.py", "run_dispatcher", "--devices", str(DEVICES)]
        + ["--name", "bench-peers"],
        subprocess_env(),
        RESULTS,
    )
    try:
        open_statuses = [JobStatus.QUEUED, JobStatus.RUNNING]
        wait_until(
            lambda: not Job.objects.filter(status__in=open_statuses).exists(),
            1800,
            "the dispatcher to drain the queue",
            interval=0.5,
        )
    finally:
        dispatcher.stop()
    span = Job.objects.aggregate(first=Min("started_at"), last=Max("finished_at"))
    succeeded = Job.objects.filter(status=JobStatus.SUCCEEDED).count()
    if succeeded != single + bulk:
        raise RuntimeError(f"zypher: {succeeded} of {single + bulk} jobs succeeded")
    figures["drain"] = succeeded / (span["last"] - span["first"]).total_seconds()
    figures["left_queued"] = 0
    return figures


def breakdown(jobs: int) -> dict[str, float]:
    """What one drained job costs Zypher, part by part, each timed alone (ms per job)."""
    reset_tables()
    owner, _ = User.objects.get_or_create(username="bench-peers")
    spec = JobSpec(kind="noop", input=0, device_type="cpu")
    for start in range(0, jobs + 1, 500):
        submit_jobs(owner, [spec] * min(500, jobs + 1 - start))
    parts: dict[str, float] = {}
    claim = claim_next("cpu", "bench-breakdown")
    started = time.perf_counter()
    for _ in range(jobs):
        assert claim is not None
        record = partial(finish_and_claim_next, claim, "bench-breakdown")
        _, claim = settle_outcome(record, succeeded=True, duration=0.0, result=None, error="")
    parts["settle_and_claim"] = (time.perf_counter() - started) / jobs * 1000
    parts["select_1"] = summary_ms(select_one_round_trips(jobs))["median_ms"]

    async def hops() -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as thread:
            started = time.perf_counter()
            for _ in range(jobs):
                await loop.run_in_executor(thread, time.monotonic)
            return (time.perf_counter() - started) / jobs * 1000

    parts["thread_hop"] = asyncio.run(hops())
    parent_end, child_end = multiprocessing.get_context("spawn").Pipe()
    worker = multiprocessing.get_context("spawn").Process(
        target=worker_main, args=(child_end, os.getpid()), daemon=True
    )
    worker.start()
    try:
        parent_end.send(JobOrder(0, 1, "noop", 0))  # the first waits for Django's start-up
        parent_end.recv()
        started = time.perf_counter()
        for index in range(jobs):
            parent_end.send(JobOrder(index, 1, "noop", index))
            parent_end.recv()
        parts["pipe_hop"] = (time.perf_counter() - started) / jobs * 1000
    finally:
        parent_end.send(None)
        worker.join(5)
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer jobs (a smoke test)")
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        print("bench_peers needs PostgreSQL: run it through `make bench`", file=sys.stderr)
        return 2
    call_command("migrate", verbosity=0)
    single, bulk, batch = (500, 5_000, 500) if options.quick else (1_000, 10_000, 500)
    load = os.getloadavg()
    python = peers_python()
    results: dict[str, dict[str, float]] = {"zypher": run_zypher(single, bulk, batch)}
    for label, driver, poll in PEERS:
        results[label] = run_peer(python, driver, single, bulk, batch, poll)
    parts = breakdown(2_000)
    end_load = os.getloadavg()
    zypher = results["zypher"]
    peers = [label for label, _, _ in PEERS]
    labels = {
        "enqueue_single": f"enqueue, one job per call ({single:,})",
        "enqueue_bulk": f"enqueue, lists of {batch} ({bulk:,})",
        "drain": f"drain no-op jobs, {DEVICES} devices ({single + bulk:,})",
    }
    rows: list[list[Any]] = []
    for figure, label in labels.items():
        row: list[Any] = [label, f"{zypher[figure]:,.0f}"]
        for peer in peers:
            row.append(
                f"{results[peer][figure]:,.0f} ({zypher[figure] / results[peer][figure]:.2f}x)"
            )
        rows.append(row)
    print_table(
        f"Jobs per second, same PostgreSQL, same run (load average {load[0]:.1f} at the start, "
        f"{end_load[0]:.1f} at the end); in brackets: Zypher's figure over the peer's",
        ["workload", "zypher", *peers],
        rows,
    )
    slot_ms = DEVICES / zypher["drain"] * 1000
    print_table(
        "Where Zypher's drain time goes: each part timed alone, in process, ms per job "
        f"(the drain: {DEVICES} devices / {zypher['drain']:,.0f} jobs/s = {slot_ms:.2f} slot-ms)",
        ["part", "ms per job", "share of a slot"],
        [
            [name, f"{parts[key]:.3f}", f"{parts[key] / slot_ms:.0%}"]
            for name, key in (
                ("settle-and-claim call (finish_and_claim_next)", "settle_and_claim"),
                ("job over a worker's pipe and back (noop)", "pipe_hop"),
                ("hop to a database thread and back", "thread_hop"),
                ("SELECT 1 round trip (median)", "select_1"),
            )
        ],
    )
    path = write_results(
        "peers",
        {
            "load_average": load,
            "load_average_end": end_load,
            "figures": results,
            "breakdown_ms": parts,
            "slot_ms": slot_ms,
            "quick": options.quick,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
