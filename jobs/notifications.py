"""PostgreSQL LISTEN as an async iterator, for the web tier and the dispatcher alike.

`jobs.queue` sends NOTIFY on two channels: NOTIFY_CHANNEL when a user becomes
backlogged in a pool (idle dispatchers wake) and DONE_CHANNEL when a job reaches a final
status (waiting /predict requests wake). A listener holds one connection of its own and
reconnects by itself when the database goes away; it is told through `on_connect` and
`on_disconnect`, since notifications sent while it was away are lost.

The connection is made from the same settings as Django's (OPTIONS included: TLS
settings such as `sslmode` apply to it too), with TCP keepalives on. A socket can die
without an error (a host or NAT that dropped the connection): every `ping_seconds` the
listener runs `SELECT 1` and, without an answer within `ping_timeout`, drops the
connection and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend

log = logging.getLogger("zypher.notifications")

PING_SECONDS = 5.0  # how often a listener proves its connection alive
PING_TIMEOUT_SECONDS = 5.0  # no answer to the ping within this: reconnect
# Defaults for the listener's connection; the database OPTIONS override them.
LISTENER_DEFAULTS: dict[str, Any] = {
    "application_name": "zypher-listen",
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
# What Django's backend adds for its own connections, which are no libpq parameters.
_DJANGO_ONLY = ("cursor_factory", "context", "prepare_threshold", "server_side_binding", "pool")


def listener_conninfo(settings_dict: dict[str, Any] | None = None) -> dict[str, Any]:
    """libpq parameters for a separate connection to the database Django uses.

    Built by Django's own backend (`get_connection_params`) from `settings_dict`
    (default: the default database's, as the test runner may have renamed it), so
    OPTIONS such as `sslmode`, `sslrootcert` or `service` apply as they do to Django's
    connections; TCP keepalives and a connect timeout are added unless OPTIONS set them.
    """
    if settings_dict is None:
        settings_dict = connections.settings[DEFAULT_DB_ALIAS]
    wrapper = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict)
    params = dict(wrapper.get_connection_params())
    for key in _DJANGO_ONLY:
        params.pop(key, None)
    return {**LISTENER_DEFAULTS, **params}


async def _answers_ping(listener: Any, timeout: float) -> bool:
    """True if the connection answers `SELECT 1` within `timeout` seconds."""
    ping = asyncio.ensure_future(listener.execute("SELECT 1"))
    done, _ = await asyncio.wait({ping}, timeout=timeout)
    if done:
        ping.result()  # a connection error surfaces here
        return True
    # Closing first lets the cancelled query end at once (psycopg would otherwise try to
    # cancel it on the server through the dead connection).
    await listener.close()
    ping.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait({ping}, timeout=1)
    return False


async def notifications(
    channel: str,
    *,
    on_connect: Callable[[], None] | None = None,
    on_disconnect: Callable[[], None] | None = None,
    retry_seconds: float = 1.0,
    ping_seconds: float | None = None,
    ping_timeout: float | None = None,
) -> AsyncIterator[str]:
    """Yield the payload of every NOTIFY on `channel`, forever."""
    import psycopg

    while True:
        ping_every = PING_SECONDS if ping_seconds is None else ping_seconds
        ping_wait = PING_TIMEOUT_SECONDS if ping_timeout is None else ping_timeout
        listener = None
        try:
            listener = await psycopg.AsyncConnection.connect(autocommit=True, **listener_conninfo())
            if not await _answers_ping(listener, ping_wait):
                raise TimeoutError("no answer from the new connection")
            await listener.execute(f"LISTEN {channel}")
            if on_connect is not None:
                on_connect()
            while True:
                # Notifications that arrive during the ping are kept by psycopg and
                # yielded by the next notifies().
                async for notification in listener.notifies(timeout=ping_every):
                    yield notification.payload
                if not await _answers_ping(listener, ping_wait):
                    raise TimeoutError(f"no answer to a ping within {ping_wait:g}s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("LISTEN %s lost (%s); reconnecting", channel, str(exc).strip()[:200])
        finally:
            if listener is not None:
                await listener.close()
            if on_disconnect is not None:
                on_disconnect()
        await asyncio.sleep(retry_seconds)
