"""Handlers for tests: they sleep, fail, crash, and log each execution.

Registered for the tests' subprocesses through ZYPHER_HANDLERS (see conftest).
"""

from __future__ import annotations

import os
import time
from typing import Any


def _record(input: Any) -> None:
    path = os.environ.get("ZYPHER_TEST_EXEC_LOG")
    if path:
        # O_APPEND writes of one short line are atomic between processes.
        with open(path, "a") as log:
            log.write(f"{input.get('tag', '') if isinstance(input, dict) else input}\n")


def sleep(input: Any) -> dict[str, Any]:
    """Sleeps `input["seconds"]` (default 0.05) and logs the execution when it completes."""
    seconds = float(input.get("seconds", 0.05)) if isinstance(input, dict) else 0.05
    time.sleep(seconds)
    _record(input)
    return {"slept": seconds, "tag": input.get("tag") if isinstance(input, dict) else None}


def boom(input: Any) -> None:
    raise ValueError(f"boom on {input!r}")


def crash(input: Any) -> None:
    os._exit(13)
