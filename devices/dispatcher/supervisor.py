"""Supervised background tasks of the dispatcher: restarted when they crash, never silent.

Lease renewal, reaping, health checks, callbacks, LISTEN and the remote loops each run
forever. An exception that escapes one is logged with its traceback and the task is
restarted after a capped, doubling delay. A task that crashes MAX_CRASHES times within
CRASH_WINDOW_SECONDS is broken, not unlucky: the supervisor gives up and tells the
dispatcher, which stops and exits non-zero for its own supervisor (`make run`, systemd)
to restart it. A dispatcher is never left half alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from django.conf import settings

log = logging.getLogger("zypher.dispatcher")

MAX_CRASHES = 5
CRASH_WINDOW_SECONDS = 60.0
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 10.0


class InjectedFault(RuntimeError):
    """A crash asked for by ZYPHER_TEST_TASK_FAULTS (tests only)."""


def _injected_faults() -> dict[str, int]:
    faults = {}
    for item in settings.ZYPHER_TEST_TASK_FAULTS.split(","):
        name, _, count = item.strip().partition("=")
        if name and count.isdigit():
            faults[name] = int(count)
    return faults


async def supervise(
    name: str,
    task: Callable[[], Awaitable[None]],
    give_up: Callable[[str], None],
) -> None:
    """Run `task()` until cancelled, restarting it after a crash; call `give_up(reason)`
    and return when it keeps crashing."""
    crashes: deque[float] = deque()
    faults = _injected_faults().get(name, 0)
    delay = FIRST_DELAY_SECONDS
    while True:
        started = time.monotonic()
        try:
            if faults > 0:
                faults -= 1
                raise InjectedFault(f"fault injected into {name} (ZYPHER_TEST_TASK_FAULTS)")
            await task()
            raise RuntimeError(f"{name} returned, but it should run until cancelled")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s crashed", name)
        now = time.monotonic()
        crashes.append(now)
        while crashes and crashes[0] < now - CRASH_WINDOW_SECONDS:
            crashes.popleft()
        if len(crashes) >= MAX_CRASHES:
            reason = f"background task {name} crashed {len(crashes)} times in {CRASH_WINDOW_SECONDS:.0f}s"
            log.critical("%s: giving up; the dispatcher stops and exits non-zero", reason)
            give_up(reason)
            return
        if now - started > CRASH_WINDOW_SECONDS:
            delay = FIRST_DELAY_SECONDS  # it had run well for a while: a fresh incident
        log.warning("restarting background task %s in %.1fs", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_SECONDS)
