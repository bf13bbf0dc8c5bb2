"""The handler registry: which Python callable runs a job of a given `kind`.

A handler is `def handler(input) -> result`: it gets the job's JSON input and returns a
JSON-serialisable result; an exception fails the job with its message. Handlers run in
the dispatcher's worker processes, never in a web request. A handler may call
`report_progress(fraction, message)` as often as it likes (see `jobs.progress`).

`jobs` names only its own handlers here. Other apps add theirs from their
`AppConfig.ready()` through `register_handlers` (splines: `spline`, devices: `qpu`), and
operators add their own `limited_f` with `ZYPHER_HANDLERS='{"kind": "package.module:function"}'`,
which wins over both.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import time
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from django.conf import settings

from jobs.progress import report_progress

__all__ = ["report_progress", "register_handlers", "resolve_handler", "known_kinds"]

BUILTIN_HANDLERS: dict[str, str] = {
    "limited_f": "jobs.handlers:limited_f",
    "predict": "jobs.handlers:predict",
    "noop": "jobs.handlers:noop",
}

# Kinds other apps registered at start-up (their AppConfig.ready()), as dotted paths, so
# that nothing is imported until a worker runs a job of that kind.
_app_handlers: dict[str, str] = {}


def register_handlers(paths: Mapping[str, str]) -> None:
    """Add `{"kind": "package.module:function"}` handlers; called from an app's ready()."""
    _app_handlers.update(paths)
    resolve_handler.cache_clear()


def handler_paths() -> dict[str, str]:
    return {**BUILTIN_HANDLERS, **_app_handlers, **settings.ZYPHER_HANDLERS}


def known_kinds() -> list[str]:
    return sorted(handler_paths())


@cache
def resolve_handler(kind: str) -> Callable[[Any], Any]:
    """Import the callable registered for `kind` (KeyError for an unknown kind)."""
    module_name, _, function_name = handler_paths()[kind].partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def limited_f(x: Any) -> dict[str, Any]:
    """A CPU-bound stand-in for scarce compute: hashes for ZYPHER_LIMITED_F_SECONDS."""
    deadline = time.monotonic() + settings.ZYPHER_LIMITED_F_SECONDS
    digest = hashlib.sha256(json.dumps(x, sort_keys=True).encode()).digest()
    seconds = settings.ZYPHER_LIMITED_F_SECONDS
    rounds = 0
    while True:
        digest = hashlib.sha256(digest).digest()
        rounds += 1
        if rounds % 1000 == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            report_progress(1 - left / seconds if seconds > 0 else 0.0, f"{rounds} rounds")
    output: Any = (
        x * x if isinstance(x, int | float) and not isinstance(x, bool) else digest.hex()[:16]
    )
    return {"x": x, "y": output}


def predict(input: Any) -> dict[str, Any]:
    """The mock model: a random delay in ZYPHER_PREDICT_DELAY, then a random number."""
    low, high = settings.ZYPHER_PREDICT_DELAY
    time.sleep(random.uniform(low, high))
    return {"input": input, "result": str(random.randint(1000, 20000))}


def noop(input: Any) -> Any:
    """Returns its input at once: measures the scheduler, not the work."""
    return input
