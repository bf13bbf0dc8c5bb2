"""PostgreSQL LISTEN as an async iterator, for the web tier and the dispatcher alike.

`jobs.queue` sends NOTIFY on two channels: NOTIFY_CHANNEL when a user becomes
backlogged in a pool (idle dispatchers wake) and DONE_CHANNEL when a job reaches a final
status (waiting /predict requests wake). A listener holds one connection of its own and
reconnects by itself when the database goes away; it is told through `on_connect` and
`on_disconnect`, since notifications sent while it was away are lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.conf import settings

log = logging.getLogger("zypher.notifications")


def listener_conninfo() -> dict[str, Any]:
    """Connection parameters of the default database, for a separate psycopg connection."""
    params = settings.DATABASES["default"]
    conninfo = {
        "dbname": params["NAME"],
        "user": params.get("USER"),
        "password": params.get("PASSWORD"),
        "host": params.get("HOST"),
        "port": params.get("PORT"),
    }
    return {key: value for key, value in conninfo.items() if value}


async def notifications(
    channel: str,
    *,
    on_connect: Callable[[], None] | None = None,
    on_disconnect: Callable[[], None] | None = None,
    retry_seconds: float = 1.0,
) -> AsyncIterator[str]:
    """Yield the payload of every NOTIFY on `channel`, forever."""
    import psycopg

    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                autocommit=True, **listener_conninfo()
            ) as listener:
                await listener.execute(f"LISTEN {channel}")
                if on_connect is not None:
                    on_connect()
                async for notification in listener.notifies():
                    yield notification.payload
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("LISTEN %s lost (%s); reconnecting", channel, str(exc).strip()[:200])
        finally:
            if on_disconnect is not None:
                on_disconnect()
        await asyncio.sleep(retry_seconds)
