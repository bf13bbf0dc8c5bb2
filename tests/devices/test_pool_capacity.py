"""`pool_capacity` (a queued job's wait_reason, on every job detail read): one query
outside a transaction, and a missing devices table does not end one it runs inside."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction

from devices.models import Device
from devices.monitoring import device_states, pool_capacity
from jobs.models import User


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_it_is_one_query(django_assert_num_queries: Any) -> None:
    Device.objects.create(name="qpu-1", device_type="qpu", kind=Device.Kind.REMOTE, size=5)

    with django_assert_num_queries(1):  # no BEGIN and COMMIT around it
        capacity = pool_capacity("qpu")

    assert capacity == (1, 5)


@pytest.mark.django_db
def test_inside_a_transaction_a_missing_devices_table_does_not_end_it() -> None:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE devices_device RENAME TO devices_device_away")

        assert pool_capacity("qpu") == (0, None)
        assert device_states() == []
        # The transaction goes on: a failed query without its savepoint would end it.
        assert User.objects.create(username="after").pk is not None
