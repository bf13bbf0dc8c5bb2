"""A no-op handler that stamps when it ran, so a benchmark can measure the idle gap."""

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
