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


def not_a_number(input: Any) -> dict[str, Any]:
    """A result JSON cannot store: NaN."""
    return {"value": float("nan")}


def nul_string(input: Any) -> dict[str, Any]:
    """A result PostgreSQL cannot store: a NUL character in a key and a value."""
    return {"text": "before\x00after", "key\x00": 1}


def huge(input: Any) -> dict[str, Any]:
    """A result of `input["bytes"]` characters (over ZYPHER_MAX_RESULT_BYTES in the tests)."""
    size = int(input.get("bytes", 2_000_000)) if isinstance(input, dict) else 2_000_000
    return {"blob": "x" * size}


def nul_error(input: Any) -> None:
    """Fails with a message PostgreSQL cannot store in a text column."""
    raise ValueError("bad byte \x00 in the error")
