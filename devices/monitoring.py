"""The devices' part of the operators' dashboard and `/metrics`: every registered device
and its state, handed to `jobs.monitoring.stats` at start-up (`devices.apps`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Max, Q

from devices.models import Device
from jobs.monitoring.stats import MAX_RUNNING_LISTED, DeviceState


@contextmanager
def _savepoint_in_a_transaction() -> Iterator[None]:
    """A savepoint inside a transaction, where a missing table (the devices migration has
    not run yet) must not end it; nothing outside one, where a failed query ends nothing
    and BEGIN and COMMIT would be two more round trips on every job detail read."""
    if connection.in_atomic_block:
        with transaction.atomic():
            yield
    else:
        yield


def device_states(limit: int | None = MAX_RUNNING_LISTED) -> list[DeviceState]:
    """Registered devices by pool and name (at most `limit`, None: all), each with its
    state and current job."""
    try:
        with _savepoint_in_a_transaction():
            rows = list(
                Device.objects.order_by("device_type", "name").values_list(
                    "name", "device_type", "kind", "state", "current_job__public_id", "last_seen"
                )[:limit]
            )
    except DatabaseError:  # the devices migration has not run yet
        return []
    return [
        {
            "device": name,
            "pool": pool,
            "kind": kind,
            "state": state,
            "job": str(job) if job else None,
            "last_seen": last_seen.isoformat() if last_seen else None,
        }
        for name, pool, kind, state, job, last_seen in rows
    ]


def pool_capacity(device_type: str) -> tuple[int, int | None]:
    """The pool's registered devices and their largest size (None: a local worker, which
    takes any size), for `jobs.queue.wait_reason`."""
    try:
        with _savepoint_in_a_transaction():
            found = Device.objects.filter(device_type=device_type).aggregate(
                devices=Count("id"),
                largest=Max("size"),
                unsized=Count("id", filter=Q(kind=Device.Kind.LOCAL)),
            )
    except DatabaseError:
        return 0, None
    return found["devices"], None if found["unsized"] else found["largest"]
