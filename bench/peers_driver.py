"""The peers' side of bench/bench_peers.py, run by the Python of the bench's own virtual
environment (var/bench-peers-venv, where pgqueuer and procrastinate are installed; never
the project's). No Django here.

    python bench/peers_driver.py pgqueuer|procrastinate DSN SINGLE BULK BATCH DEVICES [POLL]

Enqueues SINGLE jobs one call each, then BULK jobs in lists of BATCH, then drains every
queued no-op job with DEVICES jobs at most running at once; prints one JSON line of figures.
The drain is timed as Zypher's is: from the first job's start to the last one's end (the
no-op handler notes both), so the worker's start-up and shut-down are outside it.
POLL (pgqueuer only, seconds): its worker's poll interval while it holds DEVICES jobs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def timed(
    label: str, figures: dict[str, float], jobs: int, run: Callable[[], Awaitable[Any]]
) -> None:
    started = time.perf_counter()
    await run()
    figures[label] = jobs / (time.perf_counter() - started)


class Span:
    """The first start and the last end of the drain's jobs (monotonic seconds)."""

    def __init__(self) -> None:
        self.first = self.last = 0.0

    def started(self) -> None:
        if not self.first:
            self.first = time.monotonic()

    def ended(self) -> None:
        self.last = time.monotonic()

    def rate(self, jobs: int) -> float:
        return jobs / (self.last - self.first)


async def pgqueuer(
    dsn: str, single: int, bulk: int, batch: int, devices: int, poll: float
) -> dict[str, float]:
    from datetime import timedelta

    import asyncpg  # type: ignore[import-not-found]

    # Installed only in the bench's own environment (bench/bench_peers.py).
    from pgqueuer import AsyncpgDriver, Queries, QueueManager  # type: ignore[import-not-found]
    from pgqueuer.domain.types import QueueExecutionMode  # type: ignore[import-not-found]

    connection = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(connection))
    if not await queries.schema_is_installed():
        await queries.install()
    await queries.clear_queue()
    figures: dict[str, float] = {}

    async def one_by_one() -> None:
        for index in range(single):
            await queries.enqueue("noop", str(index).encode(), 0)

    async def in_lists() -> None:
        for start in range(0, bulk, batch):
            count = min(batch, bulk - start)
            await queries.enqueue(["noop"] * count, [b"0"] * count, [0] * count)

    await timed("enqueue_single", figures, single, one_by_one)
    await timed("enqueue_bulk", figures, bulk, in_lists)

    worker_connection = await asyncpg.connect(dsn)
    manager = QueueManager(Queries(AsyncpgDriver(worker_connection)))

    span = Span()

    @manager.entrypoint("noop")
    async def noop(job: Any) -> None:
        span.started()
        span.ended()

    # The same workload as Zypher's: at most `devices` jobs picked at once (pgqueuer needs
    # the cap to be at least twice the batch, so batch 1), each job's end written on its
    # own. Its default (batches of 10, no cap) takes 10 jobs per dequeue and writes their
    # ends 10 at a time. At the cap its loop does not look for work when a job ends: it
    # waits for a NOTIFY or its poll interval (`min_dequeue_poll_interval`, 0.1 s), which
    # left the 2 slots empty most of the time; `poll` shortens that.
    manager.min_dequeue_poll_interval = timedelta(seconds=poll)
    await manager.run(
        dequeue_timeout=timedelta(seconds=poll),
        batch_size=1,
        max_concurrent_tasks=devices,
        mode=QueueExecutionMode.drain,
    )
    figures["drain"] = span.rate(single + bulk)
    left = sum(row.count for row in await queries.queue_size() if row.status == "queued")
    figures["left_queued"] = left
    await connection.close()
    return figures


async def procrastinate(
    dsn: str, single: int, bulk: int, batch: int, devices: int, poll: float
) -> dict[str, float]:
    import procrastinate as pc  # type: ignore[import-not-found]

    app = pc.App(connector=pc.PsycopgConnector(conninfo=dsn))
    figures: dict[str, float] = {}
    span = Span()

    @app.task(name="noop")
    def noop(n: int) -> None:
        span.started()
        span.ended()

    async with app.open_async():
        try:
            await app.schema_manager.apply_schema_async()
        except Exception as exc:  # already installed by an earlier run on this database
            if "already exists" not in str(exc):
                raise
        await app.connector.execute_query_async("DELETE FROM procrastinate_jobs")

        async def one_by_one() -> None:
            for index in range(single):
                await noop.defer_async(n=index)

        async def in_lists() -> None:
            for start in range(0, bulk, batch):
                count = min(batch, bulk - start)
                await noop.batch_defer_async(*({"n": n} for n in range(count)))

        await timed("enqueue_single", figures, single, one_by_one)
        await timed("enqueue_bulk", figures, bulk, in_lists)

        await app.run_worker_async(concurrency=devices, wait=False, install_signal_handlers=False)
        figures["drain"] = span.rate(single + bulk)
        rows = await app.connector.execute_query_all_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'todo'"
        )
        figures["left_queued"] = rows[0]["n"]
    return figures


def main(argv: list[str]) -> int:
    peer, dsn = argv[0], argv[1]
    single, bulk, batch, devices = (int(value) for value in argv[2:6])
    poll = float(argv[6]) if len(argv) > 6 else 0.1
    run = {"pgqueuer": pgqueuer, "procrastinate": procrastinate}[peer]
    figures = asyncio.run(run(dsn, single, bulk, batch, devices, poll))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
