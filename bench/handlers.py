"""No-op handlers: one stamps when it ran, so a benchmark can measure the idle gap; one
reports progress in a tight loop, so a benchmark can measure what reporting costs."""

from __future__ import annotations

import os
import time
from typing import Any


def stamp(input: Any) -> None:
    """Appends "<device pid> <start> <end>" (wall-clock seconds) to ZYPHER_BENCH_STAMPS."""
    start = time.time()
    end = time.time()
    with open(os.environ["ZYPHER_BENCH_STAMPS"], "a") as out:
        out.write(f"{os.getpid()} {start:.6f} {end:.6f}\n")


PROGRESS_CALLS = 1000


def progress_noop(input: Any) -> Any:
    """The `noop` handler plus PROGRESS_CALLS progress reports in a tight loop."""
    from jobs.handlers import report_progress

    for call in range(PROGRESS_CALLS):
        report_progress(call / PROGRESS_CALLS, "working")
    return input
