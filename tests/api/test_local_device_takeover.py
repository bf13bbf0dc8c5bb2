"""Nobody without the registrar's rights takes a local worker's device id (issue 17).

Open mode without ZYPHER_DEVICE_TOKEN keeps the QPU exercise's scripts working: they
register and remove their own devices without a token. A local worker's row belongs to
its dispatcher (which keeps running it whatever the row says), so an anonymous script
must not remove it: removing it and registering the freed id would hand the worker's
name, and the commands operators send to it, to whoever registered it.
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from devices import pool
from devices.models import Device

pytest_plugins = ["tests.support.api_fixtures"]

LOCAL = "local-worker-1"


@pytest.fixture
def scripts_mode(db: None, settings: Any) -> None:
    settings.ZYPHER_OPEN_MODE = True
    settings.ZYPHER_DEVICE_TOKEN = ""
    pool.register_local_devices("dispatcher-1", [(LOCAL, "qpu")])


def test_an_anonymous_script_cannot_remove_a_local_workers_device(scripts_mode: None) -> None:
    response = APIClient().delete(f"/devices/{LOCAL}")
    assert response.status_code == 403, response.content
    assert "local worker" in response.content.decode()
    assert Device.objects.get(name=LOCAL).kind == Device.Kind.LOCAL


def test_an_anonymous_script_cannot_take_a_local_workers_id(scripts_mode: None) -> None:
    client = APIClient()
    client.delete(f"/devices/{LOCAL}")
    client.post(
        "/devices",
        {"id": LOCAL, "address": "http://203.0.113.9:9/", "type": "qpu", "size": 4},
        format="json",
    )
    device = Device.objects.get(name=LOCAL)
    assert (device.kind, device.url) == (Device.Kind.LOCAL, "")


def test_scripts_still_remove_the_devices_they_registered(scripts_mode: None) -> None:
    client = APIClient()
    body = {"id": "qpu-9", "address": "addr1", "type": "qpu", "size": 4}
    assert client.post("/devices", body, format="json").status_code == 201
    assert client.delete("/devices/qpu-9").status_code == 200
    assert not Device.objects.filter(name="qpu-9").exists()
