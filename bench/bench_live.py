"""Live jobs: what progress reports cost, and what 1,000 open event streams cost.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.bench_live [--quick]

(or on SQLite without the wrapper). Each figure stands next to a ceiling measured in
the same run, since the machine is shared:

* `report_progress` in a tight loop, against calling an empty function;
* draining a backlog of `noop` jobs through `run_dispatcher` (real worker processes),
  against the same backlog of `progress_noop` jobs, which report progress 1,000 times
  each (the coalesced path: pipe, dispatcher, one write per flush);
* 1,000 open `GET /api/jobs/<id>/events` streams on queued jobs: the web processes' RSS
  and threads, and `/api/health/`'s latency meanwhile against before; then a dispatcher
  drains the jobs and every stream must end with its `ended` event.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from bench.common import RESULTS, log, print_table, setup_django, subprocess_env, write_results

setup_django()

from django.db import connection  # noqa: E402

from bench.bench_predict import memory_of  # noqa: E402
from bench.handlers import PROGRESS_CALLS  # noqa: E402
from jobs.models import Job, User  # noqa: E402
from jobs.progress import ProgressReporter, report_progress, reporting  # noqa: E402
from jobs.queue import JobSpec, submit_jobs  # noqa: E402
from tests.support.processes import ServiceProcess, start_gateway, wait_until  # noqa: E402


def reset() -> None:
    Job.objects.all().delete()
    from jobs.models import FairPool, FairShareAccount, JobRun

    JobRun.objects.all().delete()
    FairShareAccount.objects.all().delete()
    FairPool.objects.all().delete()


def submit(kind: str, count: int, users: int = 10) -> list[str]:
    ids: list[str] = []
    owners = [User.objects.get_or_create(username=f"live{n}")[0] for n in range(users)]
    for start in range(0, count, 500):
        owner = owners[(start // 500) % users]
        specs = [
            JobSpec(kind=kind, input=n, device_type="cpu")
            for n in range(start, min(count, start + 500))
        ]
        jobs, _ = submit_jobs(owner, specs)
        ids += [str(job.public_id) for job in jobs]
    return ids


# --- progress -------------------------------------------------------------------------


def call_cost(calls: int) -> dict[str, float]:
    def empty(fraction: float, message: str = "") -> None:
        return None

    started = time.perf_counter()
    for call in range(calls):
        empty(call / calls, "working")
    ceiling = time.perf_counter() - started
    with reporting(ProgressReporter()):
        started = time.perf_counter()
        for call in range(calls):
            report_progress(call / calls, "working")
        cost = time.perf_counter() - started
    return {"empty_ns": ceiling / calls * 1e9, "report_ns": cost / calls * 1e9}


def drain(kind: str, count: int, devices: int) -> float:
    """Jobs per second run by a dispatcher with `devices` workers on a backlog of `count`."""
    reset()
    submit(kind, count)
    connection.close()
    dispatcher = ServiceProcess(
        "dispatcher",
        [
            sys.executable,
            "manage.py",
            "run_dispatcher",
            "--devices",
            str(devices),
            "--name",
            "live",
        ],
        subprocess_env(ZYPHER_IDLE_POLL_SECONDS="0.2"),
        RESULTS,
    )
    try:
        wait_until(lambda: Job.objects.filter(status="succeeded").exists(), 60, "the first job")
        started = time.monotonic()
        first_done = Job.objects.filter(status="succeeded").count()
        wait_until(
            lambda: not Job.objects.filter(status__in=["queued", "running"]).exists(),
            600,
            "the drain",
        )
        elapsed = time.monotonic() - started
    finally:
        dispatcher.stop()
    failed = Job.objects.exclude(status="succeeded").count()
    if failed:
        raise RuntimeError(f"{failed} {kind} jobs did not succeed")
    return (count - first_done) / elapsed


# --- event streams --------------------------------------------------------------------


async def open_stream(
    host: str, port: int, job_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"stream refused: {head[:200]!r}")
    await reader.readuntil(b"event: queued")
    return reader, writer


async def health_latencies(host: str, port: int, count: int) -> list[float]:
    latencies = []
    reader, writer = await asyncio.open_connection(host, port)
    for _ in range(count):
        started = time.perf_counter()
        writer.write(f"GET /api/health/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
    writer.close()
    return latencies


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
    }


def streams(count: int) -> dict[str, Any]:
    reset()
    ids = submit("noop", count, users=50)
    connection.close()
    gateway, url = start_gateway(subprocess_env(), RESULTS)
    host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80

    async def run() -> dict[str, Any]:
        await health_latencies(host, port, 50)  # warm-up
        before = await health_latencies(host, port, 300)
        idle = memory_of(gateway.pid)
        opened = []
        for start in range(0, count, 100):
            opened += await asyncio.gather(
                *(open_stream(host, port, i) for i in ids[start : start + 100])
            )
        await asyncio.sleep(2)  # a few rounds of the batched poll
        loaded = memory_of(gateway.pid)
        during = await health_latencies(host, port, 300)
        dispatcher = ServiceProcess(
            "dispatcher",
            [sys.executable, "manage.py", "run_dispatcher", "--devices", "2", "--name", "live"],
            subprocess_env(),
            RESULTS,
        )
        try:
            started = time.monotonic()
            ended = await asyncio.gather(
                *(asyncio.wait_for(reader.readuntil(b"event: ended"), 300) for reader, _ in opened)
            )
            drained = time.monotonic() - started
        finally:
            dispatcher.stop()
        for _, writer in opened:
            writer.close()
        return {
            "streams": count,
            "ended_events": len(ended),
            "idle_web": idle,
            "loaded_web": loaded,
            "health_before": ms(before),
            "health_during": ms(during),
            "drained_and_ended_s": round(drained, 2),
        }

    try:
        return asyncio.run(run())
    finally:
        gateway.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller backlogs")
    options = parser.parse_args()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    jobs = 500 if options.quick else 2000
    log("progress: the cost of one call")
    calls = call_cost(1_000_000)
    log(f"progress: draining {jobs} noop jobs, then {jobs} progress_noop jobs, 2 devices")
    plain = drain("noop", jobs, 2)
    reporting_rate = drain("progress_noop", jobs, 2)
    count = 200 if options.quick else 1000
    log(f"streams: {count} open event streams")
    stream = streams(count)
    print_table(
        f"Progress reports ({connection.vendor})",
        ["measure", "value", "ceiling", "ratio"],
        [
            [
                "report_progress, ns per call",
                round(calls["report_ns"]),
                round(calls["empty_ns"]),
                round(calls["report_ns"] / calls["empty_ns"], 2),
            ],
            [
                f"drain, jobs/s ({PROGRESS_CALLS} reports per job vs none)",
                round(reporting_rate, 1),
                round(plain, 1),
                round(reporting_rate / plain, 2),
            ],
        ],
    )
    print_table(
        f"{stream['streams']} open event streams ({connection.vendor}; 2 web workers)",
        ["measure", "value", "ceiling (no streams)", "ratio"],
        [
            [
                "web RSS MiB",
                stream["loaded_web"]["rss_mib"],
                stream["idle_web"]["rss_mib"],
                round(stream["loaded_web"]["rss_mib"] / stream["idle_web"]["rss_mib"], 2),
            ],
            [
                "web threads",
                stream["loaded_web"]["threads"],
                stream["idle_web"]["threads"],
                round(stream["loaded_web"]["threads"] / stream["idle_web"]["threads"], 2),
            ],
            [
                "GET /api/health/ median ms",
                stream["health_during"]["median_ms"],
                stream["health_before"]["median_ms"],
                round(
                    stream["health_during"]["median_ms"] / stream["health_before"]["median_ms"], 2
                ),
            ],
            [
                "GET /api/health/ p99 ms",
                stream["health_during"]["p99_ms"],
                stream["health_before"]["p99_ms"],
                round(stream["health_during"]["p99_ms"] / stream["health_before"]["p99_ms"], 2),
            ],
            [
                "streams ended with their job",
                stream["ended_events"],
                stream["streams"],
                round(stream["ended_events"] / stream["streams"], 2),
            ],
        ],
    )
    write_results(
        "live",
        {
            "calls": calls,
            "drain_jobs_per_s": {"noop": plain, "progress_noop": reporting_rate},
            "streams": stream,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
