"""Shared pieces of the benchmarks: Django set-up, servers, statistics and the table."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

BENCH_HANDLERS = {
    "stamp": "bench.handlers:stamp",
    "progress_noop": "bench.handlers:progress_noop",  # bench_live: the cost of progress
}


def setup_django() -> None:
    # Every benchmark writes logs and JSON under bench/results/: a fresh clone has none.
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "zypher.settings")
    os.environ.setdefault("ZYPHER_HANDLERS", json.dumps(BENCH_HANDLERS))
    import django

    django.setup()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    return {
        "n": len(seconds),
        "median_ms": statistics.median(seconds) * 1000,
        "p99_ms": percentile(seconds, 0.99) * 1000,
    }


def print_table(title: str, header: list[str], rows: Iterable[list[Any]]) -> None:
    rows = [
        [f"{cell:,.3f}" if isinstance(cell, float) else str(cell) for cell in row] for row in rows
    ]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print(flush=True)


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def machine() -> str:
    cpus = os.cpu_count()
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError):
        pass
    return f"{cpus} cores{memory}, Python {sys.version.split()[0]}"


def subprocess_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "ZYPHER_OPEN_MODE": "1",
        "ZYPHER_HANDLERS": json.dumps(BENCH_HANDLERS),
        **extra,
    }


def reset_tables() -> None:
    """Empty the queue's tables (and the process's cache of pool ids) between phases."""
    from django.db import connection

    from jobs.queue import _pool_ids

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE jobs_job, jobs_fairshareaccount, jobs_fairpool, authtoken_token, "
            "jobs_user RESTART IDENTITY CASCADE"
        )
    _pool_ids.clear()
