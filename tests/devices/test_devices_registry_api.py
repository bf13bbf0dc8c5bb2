"""The device registry API: register with the token, list the pool, remove a device (its
job goes back to the queue), staff commands, and signed reports that settle jobs."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices import pool, protocol
from devices.models import Device
from jobs.models import Job, User
from jobs.queue import JobSpec, submit_jobs
from tests.support.device_fixtures import DEVICE_TOKEN
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db

TOKEN_HEADER = {"HTTP_X_ZYPHER_DEVICE_TOKEN": DEVICE_TOKEN}
QPU_1 = {"id": "qpu-1", "type": "qpu", "size": 20, "url": "http://127.0.0.1:9001"}


@pytest.fixture(autouse=True)
def registration_token(settings: Any) -> None:
    settings.ZYPHER_DEVICE_TOKEN = DEVICE_TOKEN
    settings.ZYPHER_OPEN_MODE = False
    settings.ZYPHER_DEVICE_TIMEOUT_SECONDS = 1.0


@pytest.fixture
def client() -> APIClient:
    return APIClient()


@pytest.fixture
def staff_client() -> APIClient:
    staff = User.objects.create(username="operator", is_staff=True, is_superuser=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    return client


def register(client: APIClient, body: dict[str, Any] = QPU_1) -> Any:
    return client.post(
        "/api/devices/", body, format="json", HTTP_X_ZYPHER_DEVICE_TOKEN=DEVICE_TOKEN
    )


def qpu_job(owner: User, size: int = 4) -> Job:
    [job], _ = submit_jobs(
        owner, [JobSpec("qpu", {"instructions": [], "shots": 10}, device_type="qpu", size=size)]
    )
    return job


def test_registering_with_the_token_answers_201_with_the_device_and_its_secret(client):
    response = register(client)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["id"] == "qpu-1" and body["type"] == "qpu" and body["size"] == 20
    assert body["state"] == "unready" and body["kind"] == "remote"
    assert len(body["secret"]) == 64
    assert Device.objects.get(name="qpu-1").secret == body["secret"]


def test_registering_without_the_token_or_with_a_wrong_one_is_refused(client):
    assert client.post("/api/devices/", QPU_1, format="json").status_code == 401
    wrong = client.post("/api/devices/", QPU_1, format="json", HTTP_X_ZYPHER_DEVICE_TOKEN="guess")
    assert wrong.status_code == 403
    assert "error" in wrong.json()
    assert not Device.objects.exists()


def test_staff_may_register_without_the_token(staff_client):
    assert staff_client.post("/api/devices/", QPU_1, format="json").status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**QPU_1, "id": "bad id/1"}, "id"),
        ({**QPU_1, "size": -1}, "size"),
        ({**QPU_1, "type": ""}, "type"),
        ({k: v for k, v in QPU_1.items() if k != "url"}, "url"),
    ],
)
def test_a_bad_registration_names_the_field(client, body, field):
    response = register(client, body)
    assert response.status_code == 400
    assert field in response.json()


def test_registering_an_id_again_updates_it_with_a_new_secret(client):
    first = register(client).json()
    again = register(client, {**QPU_1, "size": 32, "url": "http://127.0.0.1:9002"})
    assert again.status_code == 200
    assert again.json()["size"] == 32 and again.json()["url"] == "http://127.0.0.1:9002"
    assert again.json()["secret"] != first["secret"]
    assert Device.objects.count() == 1


def test_the_pool_lists_state_current_job_and_user(client):
    register(client)
    register(client, {"id": "sim-1", "type": "qpu", "size": 4, "url": "addr1"})
    alice = User.objects.create(username="alice")
    job = qpu_job(alice)
    claimed = pool.claim_for_device("sim-1")
    assert claimed is not None
    response = client.get("/api/devices/", **TOKEN_HEADER)
    assert response.status_code == 200
    devices = {device["id"]: device for device in response.json()}
    assert devices["sim-1"]["state"] == "busy" and devices["sim-1"]["kind"] == "simulated"
    assert devices["sim-1"]["current_job"] == str(job.public_id)
    assert devices["sim-1"]["current_user"] == "alice"
    assert devices["qpu-1"]["state"] == "unready" and devices["qpu-1"]["current_job"] is None
    assert all("secret" not in device for device in devices.values())


def test_listing_needs_the_token_unless_open_mode(client, settings):
    assert client.get("/api/devices/").status_code == 401
    settings.ZYPHER_OPEN_MODE = True
    assert client.get("/api/devices/").status_code == 200


def test_removing_a_busy_device_puts_its_job_back_in_the_queue(client):
    register(client, {"id": "sim-1", "type": "qpu", "size": 4, "url": "addr1"})
    job = qpu_job(User.objects.create(username="alice"))
    assert pool.claim_for_device("sim-1") is not None
    response = client.delete("/api/devices/sim-1/", **TOKEN_HEADER)
    assert response.status_code == 204
    job.refresh_from_db()
    assert job.status == "queued" and job.attempts == 1 and job.device == ""
    assert "removed" in job.error
    assert not Device.objects.filter(name="sim-1").exists()
    assert client.delete("/api/devices/sim-1/", **TOKEN_HEADER).status_code == 404


def test_a_device_is_given_only_jobs_that_fit_its_size(client):
    alice = User.objects.create(username="alice")
    big = qpu_job(alice, size=10)
    register(client, {"id": "small", "type": "qpu", "size": 4, "url": "addr1"})
    assert pool.claim_for_device("small") is None
    register(client, {"id": "large", "type": "qpu", "size": 10, "url": "addr2"})
    claimed = pool.claim_for_device("large")
    assert claimed is not None
    device, claim = claimed
    assert claim.id == big.pk and device.state == "busy"


def test_commands_are_for_staff_only(client, staff_client):
    register(client)
    command = {"command": "ping"}
    assert client.post("/api/devices/qpu-1/commands/", command, format="json").status_code == 401
    assert (
        staff_client.post("/api/devices/nope/commands/", command, format="json").status_code == 404
    )


@pytest.mark.parametrize(
    "command",
    [
        {"command": "explode"},
        {"command": "calculate", "args": {"x": "soon", "msg": "hi"}},
        {"command": "calculate", "args": {"x": 1}},
        ["ping"],
    ],
)
def test_a_malformed_command_is_a_400(client, staff_client, command):
    register(client)
    response = staff_client.post("/api/devices/qpu-1/commands/", command, format="json")
    assert response.status_code == 400
    assert response.json()


def test_a_device_that_does_not_answer_is_a_502_with_a_clear_error(client, staff_client):
    register(client, {**QPU_1, "url": f"http://127.0.0.1:{free_port()}"})
    response = staff_client.post("/api/devices/qpu-1/commands/", {"command": "ping"}, format="json")
    assert response.status_code == 502
    body = response.json()
    assert body["ok"] is False and "unreachable" in body["error"]


# --- reports: signed with the device's secret, settled with the claim's fencing token ---


def report(client: APIClient, device: Device, message: dict[str, Any], secret: str = "") -> Any:
    path = f"/api/devices/{device.name}/reports/"
    body = protocol.encode(message)
    headers = protocol.sign(secret or device.secret, "POST", path, body)
    # djangorestframework-stubs type `data` as str; Django sends bytes as they are.
    return client.generic(
        "POST",
        path,
        body,  # type: ignore[arg-type]
        content_type="application/json",
        headers=headers,
    )


def running_on_remote(client: APIClient) -> tuple[Device, Job]:
    register(client)
    Device.objects.filter(name="qpu-1").update(state="ready")
    qpu_job(User.objects.create(username="alice"))
    claimed = pool.claim_for_device("qpu-1")
    assert claimed is not None
    device, claim = claimed
    return device, Job.objects.get(pk=claim.id)


def finished(job: Job, token: int) -> dict[str, Any]:
    return {
        "report": "job_finished",
        "job_id": str(job.public_id),
        "fencing_token": token,
        "succeeded": True,
        "result": {"counts": {"0101": 10}},
        "duration": 0.5,
        "state": "ready",
    }


def test_a_signed_report_settles_the_job_and_frees_the_device(client):
    device, job = running_on_remote(client)
    response = report(client, device, finished(job, job.attempts))
    assert response.status_code == 200, response.content
    job.refresh_from_db()
    assert job.status == "succeeded" and job.result == {"counts": {"0101": 10}}
    device.refresh_from_db()
    assert device.state == "ready" and device.current_job is None


def test_a_report_with_a_stale_fencing_token_is_refused(client):
    device, job = running_on_remote(client)
    response = report(client, device, finished(job, job.attempts + 1))
    assert response.status_code == 409
    assert "fencing" in response.json()["error"] or "claim" in response.json()["error"]
    job.refresh_from_db()
    assert job.status == "running"


def test_forged_and_replayed_reports_are_refused(client):
    device, job = running_on_remote(client)
    forged = report(client, device, finished(job, job.attempts), secret="f" * 64)
    assert forged.status_code == 401
    path = f"/api/devices/{device.name}/reports/"
    body = protocol.encode({"report": "state", "state": "unready"})
    headers = {
        f"HTTP_{name.upper().replace('-', '_')}": value
        for name, value in protocol.sign(device.secret, "POST", path, body).items()
    }
    first = client.generic("POST", path, body, content_type="application/json", **headers)
    replayed = client.generic("POST", path, body, content_type="application/json", **headers)
    assert first.status_code == 200
    assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]
    job.refresh_from_db()
    assert job.status == "running"


def test_a_job_given_back_by_its_device_is_requeued(client):
    device, job = running_on_remote(client)
    message = {
        "report": "job_returned",
        "job_id": str(job.public_id),
        "fencing_token": job.attempts,
        "reason": "terminated",
    }
    assert report(client, device, message).status_code == 200
    job.refresh_from_db()
    assert job.status == "queued" and job.attempts == 1
    device.refresh_from_db()
    assert device.current_job is None
