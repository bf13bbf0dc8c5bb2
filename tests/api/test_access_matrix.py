"""Who may read, create, cancel and change what: one table, every endpoint and admin page.

Actors: anonymous, user A (alice), user B (bob), staff. Token mode (open mode off), as
in production. A device agent is any actor with the registration token
(`X-Zypher-Device-Token`): the device rows are run with and without it. Each row is a request and the status each actor gets; a 404 for another
user's job or prediction is deliberate (its id is not confirmed to exist). Rows that
change state get fresh objects per actor, so the order of the table does not matter.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices import pool
from devices.qpu.programs import QpuJob, create_qpu_program
from jobs.models import Job, User
from jobs.predict.hub import close_db_connections
from jobs.queue import JobSpec, submit_jobs

pytest_plugins = ["tests.support.api_fixtures"]

ACTORS = ("anonymous", "alice", "bob", "staff")
DEVICE_TOKEN = "matrix-device-token"
WITH_TOKEN = {"X-Zypher-Device-Token": DEVICE_TOKEN}
A_DEVICE = {"id": "qpu-{actor}", "type": "qpu", "size": 4, "url": "http://127.0.0.1:9/"}
A_PROGRAM = {"device_type": "qpu", "jobs": [{"instructions": ["h 0"], "shots": 1, "size": 1}]}


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    path: str  # may name {alice_job}, {bob_job}, {alice_prediction}, {alice_pk}, {device},
    # {alice_program}, {bob_program}
    expected: dict[str, int]  # actor -> status
    body: Any = None
    headers: dict[str, str] | None = None
    admin: bool = False  # a browser with a session instead of a token


def every(status: int) -> dict[str, int]:
    return dict.fromkeys(ACTORS, status)


ROWS = [
    # --- jobs ---
    Row(
        "list jobs", "GET", "/api/jobs/", {"anonymous": 401, "alice": 200, "bob": 200, "staff": 200}
    ),
    Row(
        "submit a job",
        "POST",
        "/api/jobs/",
        {"anonymous": 401, "alice": 201, "bob": 201, "staff": 201},
        body={"input": 1},
    ),
    Row(
        "submit a job for alice",
        "POST",
        "/api/jobs/",
        {"anonymous": 401, "alice": 201, "bob": 403, "staff": 201},
        body={"input": 1, "user_id": "alice"},
    ),
    Row(
        "read alice's job",
        "GET",
        "/api/jobs/{alice_job}/",
        {"anonymous": 401, "alice": 200, "bob": 404, "staff": 200},
    ),
    Row(
        "cancel alice's job",
        "POST",
        "/api/jobs/{alice_job}/cancel/",
        {"anonymous": 401, "alice": 200, "bob": 404, "staff": 200},
    ),
    Row(
        "cancel bob's job",
        "POST",
        "/api/jobs/{bob_job}/cancel/",
        {"anonymous": 401, "alice": 404, "bob": 200, "staff": 200},
    ),
    # --- users and weights ---
    Row(
        "create a user",
        "POST",
        "/api/users/",
        {"anonymous": 401, "alice": 403, "bob": 403, "staff": 201},
        body={"user_id": "carol-{actor}", "weight": 2},
    ),
    Row(
        "read alice's account",
        "GET",
        "/api/users/alice/",
        {"anonymous": 401, "alice": 200, "bob": 403, "staff": 200},
    ),
    Row(
        "change alice's weight",
        "PATCH",
        "/api/users/alice/",
        {"anonymous": 401, "alice": 403, "bob": 403, "staff": 200},
        body={"weight": 4},
    ),
    # --- predictions ---
    Row(
        "predict (asynchronous)",
        "POST",
        "/predict",
        {"anonymous": 401, "alice": 202, "bob": 202, "staff": 202},
        body={"input": "x"},
        headers={"Async-Mode": "true"},
    ),
    Row(
        "read alice's prediction (still queued)",
        "GET",
        "/predict/{alice_prediction}",
        {"anonymous": 401, "alice": 400, "bob": 404, "staff": 400},
    ),
    # --- devices: the registration token (a device agent) or staff; commands: staff ---
    Row(
        "list devices",
        "GET",
        "/api/devices/",
        {"anonymous": 401, "alice": 401, "bob": 401, "staff": 200},
    ),
    Row("list devices with the token", "GET", "/api/devices/", every(200), headers=WITH_TOKEN),
    Row(
        "register a device",
        "POST",
        "/api/devices/",
        {"anonymous": 401, "alice": 401, "bob": 401, "staff": 201},
        body=A_DEVICE,
    ),
    Row(
        "register a device with the token",
        "POST",
        "/api/devices/",
        every(201),
        body=A_DEVICE,
        headers=WITH_TOKEN,
    ),
    Row(
        "register a device with a wrong token",
        "POST",
        "/api/devices/",
        {"anonymous": 403, "alice": 403, "bob": 403, "staff": 201},
        body=A_DEVICE,
        headers={"X-Zypher-Device-Token": "not-the-token"},
    ),
    Row(
        "remove a device",
        "DELETE",
        "/api/devices/{device}/",
        {"anonymous": 401, "alice": 401, "bob": 401, "staff": 204},
    ),
    Row(
        "remove a device with the token",
        "DELETE",
        "/api/devices/{device}/",
        every(204),
        headers=WITH_TOKEN,
    ),
    Row(
        "send a device a command",
        "POST",
        "/api/devices/{device}/commands/",
        {"anonymous": 401, "alice": 403, "bob": 403, "staff": 200},
        body={"command": "status"},
    ),
    Row(
        "send a device a command with the token",
        "POST",
        "/api/devices/{device}/commands/",
        {"anonymous": 401, "alice": 403, "bob": 403, "staff": 200},
        body={"command": "status"},
        headers=WITH_TOKEN,
    ),
    # --- programs ---
    Row(
        "submit a program",
        "POST",
        "/api/programs/",
        {"anonymous": 401, "alice": 201, "bob": 201, "staff": 201},
        body=A_PROGRAM,
    ),
    Row(
        "submit a program for alice",
        "POST",
        "/api/programs/",
        {"anonymous": 401, "alice": 201, "bob": 403, "staff": 201},
        body={**A_PROGRAM, "user_id": "alice"},
    ),
    Row(
        "read alice's program",
        "GET",
        "/api/programs/{alice_program}/",
        {"anonymous": 401, "alice": 200, "bob": 404, "staff": 200},
    ),
    Row(
        "read bob's program",
        "GET",
        "/api/programs/{bob_program}/",
        {"anonymous": 401, "alice": 404, "bob": 200, "staff": 200},
    ),
    # --- open to all ---
    Row("health", "GET", "/api/health/", every(200)),
    Row("OpenAPI schema", "GET", "/api/schema/", every(200)),
    Row(
        "token for a wrong password",
        "POST",
        "/api/token/",
        every(401),  # well formed, declined: not a 400 (issue 17)
        body={"username": "alice", "password": "wrong"},
    ),
    # --- the admin (a browser session; anonymous and non-staff go to the login page) ---
    Row(
        "admin index",
        "GET",
        "/admin/",
        {"anonymous": 302, "alice": 302, "bob": 302, "staff": 200},
        admin=True,
    ),
    Row(
        "admin jobs",
        "GET",
        "/admin/jobs/job/",
        {"anonymous": 302, "alice": 302, "bob": 302, "staff": 200},
        admin=True,
    ),
    Row(
        "admin user page",
        "GET",
        "/admin/jobs/user/{alice_pk}/change/",
        {"anonymous": 302, "alice": 302, "bob": 302, "staff": 200},
        admin=True,
    ),
]


@pytest.fixture
def world(token_mode: None, make_user: Callable[..., User], settings: Any) -> dict[str, Any]:
    settings.ZYPHER_DEVICE_TOKEN = DEVICE_TOKEN
    users = {
        "alice": make_user("alice"),
        "bob": make_user("bob"),
        "staff": make_user("staff", is_staff=True),
    }
    users["staff"].is_superuser = True
    users["staff"].save()
    return users


def _fresh_ids(users: dict[str, User]) -> dict[str, str]:
    [alice_job], _ = submit_jobs(users["alice"], [JobSpec("limited_f", 1)])
    [bob_job], _ = submit_jobs(users["bob"], [JobSpec("limited_f", 2)])
    [prediction], _ = submit_jobs(users["alice"], [JobSpec("predict", "x")])
    # A simulated device (no agent): it answers `status` itself.
    device, _ = pool.register_device(f"sim-{uuid.uuid4().hex[:8]}", "qpu", 4, "addr1")
    circuit = [QpuJob(["h 0"], 1, 1)]
    alice_program, _, _ = create_qpu_program(users["alice"], circuit, device_type="qpu")
    bob_program, _, _ = create_qpu_program(users["bob"], circuit, device_type="qpu")
    return {
        "device": device.name,
        "alice_program": str(alice_program.public_id),
        "bob_program": str(bob_program.public_id),
        "alice_job": str(alice_job.public_id),
        "bob_job": str(bob_job.public_id),
        "alice_prediction": str(prediction.public_id),
        "alice_pk": str(users["alice"].pk),
    }


def _request(row: Row, actor: str, users: dict[str, User]) -> Any:
    path = row.path.format(**_fresh_ids(users))
    body = row.body
    if isinstance(body, dict):
        body = {k: v.format(actor=actor) if isinstance(v, str) else v for k, v in body.items()}
    if row.admin:
        client = Client()
        if actor != "anonymous":
            client.force_login(users[actor])
        return client.generic(row.method, path)
    client = APIClient()
    if actor != "anonymous":
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=users[actor]).key}")
    return getattr(client, row.method.lower())(
        path, body, format="json", headers=row.headers or None
    )


def _check(row: Row, actor: str, users: dict[str, User]) -> None:
    response = _request(row, actor, users)
    assert response.status_code == row.expected[actor], getattr(response, "content", b"")[:300]
    if row.admin and response.status_code == 302:
        assert response["Location"].startswith("/admin/login/")


SYNC_ROWS = [row for row in ROWS if not row.path.startswith("/predict")]
PREDICT_ROWS = [row for row in ROWS if row.path.startswith("/predict")]


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("row", SYNC_ROWS, ids=[row.name for row in SYNC_ROWS])
def test_access(row: Row, actor: str, world: dict[str, User]) -> None:
    _check(row, actor, world)


@pytest.fixture
def predict_threads_closed() -> Iterator[None]:
    """/predict reads in its own threads: their connections must not outlive the test."""
    yield
    close_db_connections()


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("row", PREDICT_ROWS, ids=[row.name for row in PREDICT_ROWS])
def test_predict_access(
    row: Row,
    actor: str,
    transactional_db: None,
    predict_threads_closed: None,
    world: dict[str, User],
) -> None:
    # The async views read in their own thread, so the rows must be committed.
    _check(row, actor, world)


def test_a_user_never_sees_another_users_jobs_in_a_list(world: dict[str, User]) -> None:
    submit_jobs(world["bob"], [JobSpec("limited_f", n) for n in range(3)])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=world['alice']).key}")
    for query in ("", "?user_id=bob", "?user_id=bob&status=queued"):
        response = client.get("/api/jobs/" + query)
        assert response.status_code == 200
        assert all(job["user_id"] == "alice" for job in response.json()["results"])


def test_a_users_token_is_returned_once_at_creation_and_never_again(
    world: dict[str, User],
) -> None:
    staff = APIClient()
    staff.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=world['staff']).key}")
    created = staff.post("/api/users/", {"user_id": "dave", "weight": 1}, format="json")
    token = created.json()["token"]
    for response in (staff.get("/api/users/dave/"), staff.get("/api/jobs/?user_id=dave")):
        assert token not in response.content.decode()


def test_admin_actions_need_the_csrf_token(world: dict[str, User]) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(world["staff"])
    job = Job.objects.create(owner=world["alice"], kind="limited_f", input=1)
    response = browser.post(
        "/admin/jobs/job/",
        {"action": "cancel_selected", "_selected_action": [job.pk]},
    )
    assert response.status_code == 403
    job.refresh_from_db()
    assert job.status == "queued"


def test_secrets_are_never_logged(world: dict[str, User], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world["alice"].set_password("alice-password-1")
    world["alice"].save()
    token = Token.objects.get(user=world["alice"]).key
    api = APIClient()
    api.post("/api/token/", {"username": "alice", "password": "alice-password-1"}, format="json")
    api.post("/api/token/", {"username": "alice", "password": "wrong-password-9"}, format="json")
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    api.get("/api/jobs/")
    api.get("/api/users/bob/")  # a 403, which Django logs
    api.post("/api/jobs/", {"input": 1, "user_id": "bob"}, format="json")  # a 403
    staff = APIClient()
    staff.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=world['staff']).key}")
    created = staff.post(
        "/api/users/", {"user_id": "erin", "weight": 1, "password": "erin-secret-77"}, format="json"
    )
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (
        token,
        "alice-password-1",
        "wrong-password-9",
        "erin-secret-77",
        created.json()["token"],
    ):
        assert secret not in logged
