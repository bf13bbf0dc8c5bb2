"""Zypher next to pgqueuer and procrastinate: the same enqueue and drain workloads, on the
same throwaway PostgreSQL, in the same run.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.bench_peers [--quick]

The peers are installed by this bench into its own virtual environment
(var/bench-peers-venv, pinned below; never the project's dependencies) and driven by
bench/peers_driver.py there. Workloads, alike for all three:

- enqueue, single: SINGLE jobs, one call (one transaction) each, one client in process;
- enqueue, bulk: BULK jobs in lists of BATCH;
- drain: every job just enqueued (SINGLE + BULK no-op jobs), 2 devices. Zypher: `manage.py
  run_dispatcher --devices 2`, timed from the first job's start to the last one's end.
  pgqueuer: its worker in drain mode with its defaults (batch 10, no cap on jobs in
  flight: capped at 2 at once it drained ~5x slower here, so the default is its best);
  procrastinate: `run_worker_async(concurrency=2, wait=False)`. Both timed around the run.

Prints each figure with Zypher's ratio to it and writes bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import json
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

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Max, Min  # noqa: E402

from bench.bench_core import reset_tables  # noqa: E402
from jobs.models import Job, JobStatus, User  # noqa: E402
from jobs.queue import JobSpec, submit_jobs  # noqa: E402
from tests.support.processes import ServiceProcess, wait_until  # noqa: E402

PEERS_VENV = ROOT / "var" / "bench-peers-venv"
PEER_PACKAGES = [
    "pgqueuer==1.6.0",
    "procrastinate==3.10.0",
    "asyncpg==0.32.0",
    "psycopg[binary]==3.3.9",
    "psycopg-pool==3.3.3",
]
PEERS = ("pgqueuer", "procrastinate")
DEVICES = 2


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


def run_peer(python: Path, peer: str, single: int, bulk: int, batch: int) -> dict[str, float]:
    dsn = os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    log(f"{peer}: {single:,} single, {bulk:,} in lists of {batch}, drain with {DEVICES}")
    done = subprocess.run(
        [str(python), str(ROOT / "bench" / "peers_driver.py"), peer, dsn]
        + [str(single), str(bulk), str(batch), str(DEVICES)],
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
    for peer in PEERS:
        results[peer] = run_peer(python, peer, single, bulk, batch)
    zypher = results["zypher"]
    labels = {
        "enqueue_single": f"enqueue, one job per call ({single:,})",
        "enqueue_bulk": f"enqueue, lists of {batch} ({bulk:,})",
        "drain": f"drain no-op jobs, {DEVICES} devices ({single + bulk:,})",
    }
    rows: list[list[Any]] = []
    for figure, label in labels.items():
        row: list[Any] = [label, f"{zypher[figure]:,.0f}"]
        for peer in PEERS:
            row.append(
                f"{results[peer][figure]:,.0f} ({zypher[figure] / results[peer][figure]:.2f}x)"
            )
        rows.append(row)
    print_table(
        f"Jobs per second, same PostgreSQL, same run (load average {load[0]:.1f} at the start); "
        "in brackets: Zypher's figure over the peer's",
        ["workload", "zypher", *PEERS],
        rows,
    )
    path = write_results(
        "peers", {"load_average": load, "figures": results, "quick": options.quick}
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
