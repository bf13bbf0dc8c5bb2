"""Who may register, re-point and remove devices, in every mode (issue 17): with
ZYPHER_DEVICE_TOKEN set, the QPU exercise's routes need it (or staff) as `/api/devices/`
does; without it, open mode lets the scripts register new ids, but a known id is
re-registered only with the token, staff or the device's own secret; a local worker's id
never becomes remote; anonymous listings show no job ids or users."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices import pool, protocol
from devices.models import Device
from jobs.models import User
from jobs.queue import JobSpec, submit_jobs
from tests.support.device_fixtures import DEVICE_TOKEN

pytestmark = pytest.mark.django_db

WITH_TOKEN = {"HTTP_X_ZYPHER_DEVICE_TOKEN": DEVICE_TOKEN}
ATTACKER = json.dumps({"id": "qpu-1", "address": "http://attacker.example:80", "type": "qpu"})


@pytest.fixture
def client() -> APIClient:
    return APIClient()


@pytest.fixture
def staff_client() -> APIClient:
    staff = User.objects.create(username="operator", is_staff=True, is_superuser=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    return client


@pytest.fixture
def open_mode_with_token(settings: Any) -> None:
    settings.ZYPHER_OPEN_MODE = True
    settings.ZYPHER_DEVICE_TOKEN = DEVICE_TOKEN


@pytest.fixture
def open_mode_without_token(settings: Any) -> None:
    settings.ZYPHER_OPEN_MODE = True
    settings.ZYPHER_DEVICE_TOKEN = ""


def a_remote_device() -> Device:
    device, _ = pool.register_device("qpu-1", "qpu", 20, "http://127.0.0.1:9001")
    return device


def compat(client: APIClient, method: str, path: str, body: str = "", **headers: Any) -> Any:
    return client.generic(method, path, body, content_type="", **headers)


def signed_headers(secret: str, path: str, body: str) -> dict[str, str]:
    signed = protocol.sign(secret, "POST", path, body.encode())
    return {
        f"HTTP_{name.upper().replace('-', '_')}": value
        for name, value in signed.items()
        if name != "Content-Type"
    }


@pytest.mark.usefixtures("open_mode_with_token")
@pytest.mark.parametrize(
    "path, body",
    [
        ("/devices", ATTACKER),
        ("/devices/", ATTACKER),
        ("/device", ATTACKER.replace('"id"', '"device_id"').replace('"type"', '"device_type"')),
    ],
)
def test_with_a_token_set_the_exercise_routes_refuse_to_re_point_a_device_in_open_mode(
    client, path, body
):
    device = a_remote_device()
    answer = compat(client, "POST", path, body)
    assert answer.status_code == 401, answer.content
    wrong = compat(client, "POST", path, body, HTTP_X_ZYPHER_DEVICE_TOKEN="guess")
    assert wrong.status_code == 403
    after = Device.objects.get(name="qpu-1")
    assert after.url == "http://127.0.0.1:9001" and after.secret == device.secret


@pytest.mark.usefixtures("open_mode_with_token")
def test_with_a_token_set_the_exercise_routes_refuse_new_devices_and_removal_in_open_mode(
    client,
):
    new = json.dumps({"id": "qpu-9", "address": "http://attacker.example:80", "type": "qpu"})
    assert compat(client, "POST", "/devices", new).status_code == 401
    assert not Device.objects.filter(name="qpu-9").exists()
    a_remote_device()
    assert compat(client, "DELETE", "/devices/qpu-1").status_code == 401
    assert compat(client, "DELETE", "/device/qpu-1/").status_code == 401
    assert Device.objects.filter(name="qpu-1").exists()
    assert compat(client, "DELETE", "/devices/qpu-1", **WITH_TOKEN).status_code == 200
    assert compat(client, "POST", "/devices", new, **WITH_TOKEN).status_code == 201


@pytest.mark.usefixtures("open_mode_with_token")
def test_with_a_token_set_staff_may_use_the_exercise_routes(staff_client):
    a_remote_device()
    moved = json.dumps({"id": "qpu-1", "address": "http://127.0.0.1:9002", "type": "qpu"})
    assert compat(staff_client, "POST", "/devices", moved).status_code == 201
    assert Device.objects.get(name="qpu-1").url == "http://127.0.0.1:9002"
    assert compat(staff_client, "DELETE", "/devices/qpu-1").status_code == 200


@pytest.mark.usefixtures("open_mode_without_token")
def test_without_a_token_open_mode_registers_new_ids_but_not_known_ones(client, staff_client):
    first = json.dumps({"id": "qpu-a", "address": "addr1", "type": "qpu", "size": 5})
    assert compat(client, "POST", "/devices", first).status_code == 201
    device = Device.objects.get(name="qpu-a")
    again = compat(client, "POST", "/devices", ATTACKER.replace("qpu-1", "qpu-a"))
    assert again.status_code == 403, again.content
    assert "signed with its secret" in again.json()["error"]
    after = Device.objects.get(name="qpu-a")
    assert (after.url, after.kind, after.secret) == ("addr1", "simulated", device.secret)
    # Its own secret, or staff, may.
    moved = json.dumps({"id": "qpu-a", "address": "addr2", "type": "qpu", "size": 5})
    signed = compat(
        client, "POST", "/devices", moved, **signed_headers(device.secret, "/devices", moved)
    )
    assert signed.status_code == 201, signed.content
    assert Device.objects.get(name="qpu-a").url == "addr2"
    assert compat(staff_client, "POST", "/devices", first).status_code == 201


@pytest.mark.usefixtures("open_mode_without_token")
def test_a_signature_with_another_secret_does_not_re_register(client):
    a_remote_device()
    forged = compat(
        client, "POST", "/devices", ATTACKER, **signed_headers("f" * 64, "/devices", ATTACKER)
    )
    assert forged.status_code == 403
    assert Device.objects.get(name="qpu-1").url == "http://127.0.0.1:9001"


def test_a_device_re_registers_on_the_api_with_its_own_secret(client, settings):
    settings.ZYPHER_OPEN_MODE = False
    settings.ZYPHER_DEVICE_TOKEN = DEVICE_TOKEN
    device = a_remote_device()
    body = json.dumps({"id": "qpu-1", "type": "qpu", "size": 32, "url": "http://127.0.0.1:9003"})
    headers = signed_headers(device.secret, "/api/devices/", body)
    answer = client.generic(
        "POST", "/api/devices/", body, content_type="application/json", **headers
    )
    assert answer.status_code == 200, answer.content
    assert answer.json()["size"] == 32 and answer.json()["secret"] != device.secret
    # The same signed request again is a replay.
    replayed = client.generic(
        "POST", "/api/devices/", body, content_type="application/json", **headers
    )
    assert replayed.status_code == 401


@pytest.mark.parametrize("open_mode", [True, False])
def test_a_local_workers_id_never_becomes_remote(client, staff_client, settings, open_mode):
    settings.ZYPHER_OPEN_MODE = open_mode
    settings.ZYPHER_DEVICE_TOKEN = DEVICE_TOKEN
    Device.objects.update_or_create(
        name="local-0", defaults={"device_type": "cpu", "kind": Device.Kind.LOCAL, "url": ""}
    )
    body = {"id": "local-0", "type": "cpu", "size": 4, "url": "http://attacker.example:80"}
    api = client.post("/api/devices/", body, format="json", **WITH_TOKEN)
    assert api.status_code == 409, api.content
    assert staff_client.post("/api/devices/", body, format="json").status_code == 409
    raw = json.dumps({"id": "local-0", "address": body["url"], "type": "cpu"})
    assert compat(client, "POST", "/devices", raw, **WITH_TOKEN).status_code == 409
    device = Device.objects.get(name="local-0")
    assert device.kind == Device.Kind.LOCAL and device.url == ""


@pytest.mark.usefixtures("open_mode_with_token")
def test_anonymous_listings_show_no_job_ids_or_users(client, staff_client):
    pool.register_device("sim-1", "qpu", 4, "addr1")
    alice = User.objects.create(username="alice")
    [job], _ = submit_jobs(
        alice, [JobSpec("qpu", {"instructions": [], "shots": 1}, device_type="qpu", size=1)]
    )
    assert pool.claim_for_device("sim-1") is not None
    anonymous = [
        client.get("/devices").json()[0],
        client.get("/api/devices/").json()[0],
        client.get("/api/devices/sim-1/").json(),
        client.get("/devices/sim-1").json(),
    ]
    for described in anonymous:
        assert described["state"] == "busy"
        assert described["current_job"] is None and described["current_user"] is None
    for registrar in (
        client.get("/devices", **WITH_TOKEN).json()[0],
        staff_client.get("/api/devices/").json()[0],
    ):
        assert registrar["current_job"] == str(job.public_id)
        assert registrar["current_user"] == "alice"
