"""Who may read, create, cancel and change what: one table, every route and admin page.

Actors: anonymous; user A (alice) and user B (bob); `staff` (the admin's door and nothing
else: `is_staff` grants no right); `operator` and `registrar` (members of the groups the
migrations create, issue 17); `superuser`; `device` (a device agent: no user, the
registration token `X-Zypher-Device-Token`). Each row is a request and the status each
actor gets, in token mode (open mode off, as in production) and, for the rows where open
mode changes something, in open mode too. A 404 for another user's job, prediction or
program is deliberate (its id is not confirmed to exist). Rows that change state get
fresh objects per actor, so the order of the table does not matter.

`test_every_route_has_a_row` walks the URL resolver: a route added without a row here
fails. The admin's model pages are generated from `ADMIN_RIGHTS`, a table of what each
role may do with each model, so a newly registered model fails until it has a line.
"""

from __future__ import annotations

import logging
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices import pool
from devices.qpu.programs import QpuJob, create_qpu_program
from jobs import queue
from jobs.api.access import OPERATOR_GROUP, REGISTRAR_GROUP, ensure_roles
from jobs.models import FairPool, FairShareAccount, Job, User
from jobs.predict.hub import close_db_connections
from jobs.queue import JobSpec, submit_jobs

pytest_plugins = ["tests.support.api_fixtures"]

ACTORS = ("anonymous", "alice", "bob", "staff", "operator", "registrar", "superuser", "device")
USERS = ("alice", "bob", "staff", "operator", "registrar", "superuser")
DEVICE_TOKEN = "matrix-device-token"
WITH_TOKEN = {"X-Zypher-Device-Token": DEVICE_TOKEN}
A_DEVICE = {"id": "qpu-{actor}", "type": "qpu", "size": 4, "url": "http://127.0.0.1:9/"}
A_COMPAT_DEVICE = {"id": "qpu-{actor}", "address": "http://127.0.0.1:9/", "type": "qpu", "size": 4}
A_PROGRAM = {"device_type": "qpu", "jobs": [{"instructions": ["h 0"], "shots": 1, "size": 1}]}
A_COMPAT_JOB = {"id": "c-{actor}", "device_type": "qpu", "instructions": ["h 0"], "shots": 1}


def by(default: int, **others: int) -> dict[str, int]:
    """Every actor gets `default` but those named."""
    unknown = set(others) - set(ACTORS)
    assert not unknown, unknown
    return {actor: others.get(actor, default) for actor in ACTORS}


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    path: str  # may name the keys of `_fresh_ids`
    expected: dict[str, int]  # actor -> status, token mode
    body: Any = None
    headers: dict[str, str] | None = None
    admin: bool = False  # a browser with a session instead of a token
    open_mode: dict[str, int] | None = None  # actor -> status in open mode, where it differs
    form: dict[str, Any] = field(default_factory=dict)  # admin POSTs


# Who may do what with their own tokens: the shapes that repeat.
USERS_ONLY = by(201, anonymous=401, device=401)  # any account, no device
REGISTRARS = by(403, anonymous=401, registrar=200, superuser=200, device=200)
OPERATORS = by(403, anonymous=401, device=401, operator=200, superuser=200)
SUPERUSER = by(403, anonymous=401, device=401, superuser=201)
# Alice's job: her own, and whoever sees every job (operator, superuser).
ALICES = by(404, anonymous=401, device=401, alice=200, operator=200, superuser=200)
BOBS = by(404, anonymous=401, device=401, bob=200, operator=200, superuser=200)
# Open mode: anyone with an id reads (and cancels) it; a token still sees only its own.
ALICES_OPEN = {**ALICES, "anonymous": 200, "device": 200}

ROWS = [
    # --- jobs ---
    Row(
        "list jobs",
        "GET",
        "/api/jobs/?user_id=alice",
        by(200, anonymous=401, device=401),
        open_mode=by(200),
    ),
    Row("submit a job", "POST", "/api/jobs/", USERS_ONLY, body={"input": 1}, open_mode=by(201)),
    Row(
        "submit a job for alice",
        "POST",
        "/api/jobs/",
        by(403, anonymous=401, device=401, alice=201, superuser=201),
        body={"input": 1, "user_id": "alice"},
        open_mode=by(403, anonymous=201, device=201, alice=201, superuser=201),
    ),
    Row("read alice's job", "GET", "/api/jobs/{alice_job}/", ALICES, open_mode=ALICES_OPEN),
    Row(
        "cancel alice's job",
        "POST",
        "/api/jobs/{alice_job}/cancel/",
        ALICES,
        open_mode=ALICES_OPEN,
    ),
    Row("cancel bob's job", "POST", "/api/jobs/{bob_job}/cancel/", BOBS),
    Row(  # the event stream: the job's own rules (an async view, run like /predict's)
        "alice's job events",
        "GET",
        "/api/jobs/{alice_job}/events",
        ALICES,
        open_mode=ALICES_OPEN,
    ),
    # --- users, weights, the queue ---
    Row(
        "create a user",
        "POST",
        "/api/users/",
        SUPERUSER,
        body={"user_id": "carol-{actor}", "weight": 2},
        open_mode=SUPERUSER,
    ),
    Row(
        "create a staff user",
        "POST",
        "/api/users/",
        SUPERUSER,
        body={"user_id": "carol-{actor}", "weight": 2, "is_staff": True},
    ),
    Row(
        "read alice's account",
        "GET",
        "/api/users/alice/",
        {**OPERATORS, "alice": 200},
        open_mode={**OPERATORS, "alice": 200},
    ),
    Row(
        "change alice's weight",
        "PATCH",
        "/api/users/alice/",
        OPERATORS,
        body={"weight": 4},
        open_mode=OPERATORS,
    ),
    Row(
        "remove alice from the queue",
        "POST",
        "/api/users/alice/remove-from-queue/",
        OPERATORS,
        body={"deactivate": True, "stop_running": True},
        open_mode=OPERATORS,
    ),
    Row(
        "deactivate a superuser",
        "POST",
        "/api/users/root/remove-from-queue/",
        by(403, anonymous=401, device=401, superuser=200),
        body={"deactivate": True},
    ),
    Row("the dashboard's figures", "GET", "/api/stats/", OPERATORS, open_mode=OPERATORS),
    Row("Prometheus metrics", "GET", "/metrics", by(200)),
    # --- predictions ---
    Row(
        "predict (asynchronous)",
        "POST",
        "/predict",
        by(202, anonymous=401, device=401),
        body={"input": "x"},
        headers={"Async-Mode": "true"},
        open_mode=by(202),
    ),
    Row(
        "read alice's prediction (still queued)",
        "GET",
        "/predict/{alice_prediction}",
        by(404, anonymous=401, device=401, alice=400, operator=400, superuser=400),
        open_mode=by(404, anonymous=400, device=400, alice=400, operator=400, superuser=400),
    ),
    # --- devices: the registration token (a device agent) or the registrar role ---
    Row(
        "list devices",
        "GET",
        "/api/devices/",
        REGISTRARS,
        open_mode=by(200),  # without job ids or users (tests/devices)
    ),
    Row("read a device", "GET", "/api/devices/{device}/", REGISTRARS, open_mode=by(200)),
    Row(
        "register a device",
        "POST",
        "/api/devices/",
        {**REGISTRARS, "registrar": 201, "superuser": 201, "device": 201},
        body=A_DEVICE,
        open_mode={**REGISTRARS, "registrar": 201, "superuser": 201, "device": 201},
    ),
    Row(
        "register a device with a wrong token",
        "POST",
        "/api/devices/",
        by(403, registrar=201, superuser=201),
        body=A_DEVICE,
        headers={"X-Zypher-Device-Token": "not-the-token"},
    ),
    Row(
        "remove a device",
        "DELETE",
        "/api/devices/{device}/",
        {**REGISTRARS, "registrar": 204, "superuser": 204, "device": 204},
        open_mode={**REGISTRARS, "registrar": 204, "superuser": 204, "device": 204},
    ),
    Row(
        "send a device a command",  # the registrar role; the registration token is not enough
        "POST",
        "/api/devices/{device}/commands/",
        by(403, anonymous=401, device=401, registrar=200, superuser=200),
        body={"command": "status"},
        open_mode=by(403, anonymous=401, device=401, registrar=200, superuser=200),
    ),
    Row(
        "an unsigned report",  # only the device's secret signs one (tests/devices)
        "POST",
        "/api/devices/{device}/reports/",
        by(401),
        body={"type": "state", "state": "ready"},
    ),
    # --- the QPU exercise's routes (with ZYPHER_DEVICE_TOKEN set, as the devices API) ---
    Row("list devices (QPU route)", "GET", "/devices", REGISTRARS, open_mode=by(200)),
    Row("read a device (QPU route)", "GET", "/devices/{device}", REGISTRARS, open_mode=by(200)),
    Row(
        "register a device (QPU route)",
        "POST",
        "/devices",
        {**REGISTRARS, "registrar": 201, "superuser": 201, "device": 201},
        body=A_COMPAT_DEVICE,
        open_mode={**REGISTRARS, "registrar": 201, "superuser": 201, "device": 201},
    ),
    Row(
        "register a device (QPU /device)",
        "POST",
        "/device",
        {**REGISTRARS, "registrar": 201, "superuser": 201, "device": 201},
        body={
            "device_id": "qpu-{actor}",
            "address": "http://127.0.0.1:9/",
            "device_type": "qpu",
            "size": 4,
        },
        open_mode={**REGISTRARS, "registrar": 201, "superuser": 201, "device": 201},
    ),
    Row(
        "remove a device (QPU route)",
        "DELETE",
        "/devices/{device}",
        REGISTRARS,
        open_mode=REGISTRARS,
    ),
    Row(
        "submit a job (QPU route)",
        "POST",
        "/jobs",
        USERS_ONLY,
        body=A_COMPAT_JOB,
        open_mode=by(201),
    ),
    Row(
        "submit a job (QPU /job)",
        "POST",
        "/job",
        USERS_ONLY,
        body={"job_id": "c-{actor}", "device_type": "qpu", "instructions": ["h 0"]},
        open_mode=by(201),
    ),
    Row(
        "read alice's job (QPU route)",
        "GET",
        "/jobs/{alice_client_job}",
        ALICES,
        open_mode=ALICES_OPEN,
    ),
    # --- programs ---
    Row("submit a program", "POST", "/api/programs/", USERS_ONLY, body=A_PROGRAM),
    Row(
        "submit a program for alice",
        "POST",
        "/api/programs/",
        by(403, anonymous=401, device=401, alice=201, superuser=201),
        body={**A_PROGRAM, "user_id": "alice"},
    ),
    Row(
        "read alice's program",
        "GET",
        "/api/programs/{alice_program}/",
        ALICES,
        open_mode=ALICES_OPEN,
    ),
    Row("read bob's program", "GET", "/api/programs/{bob_program}/", BOBS),
    # --- splines: computing needs no account; nothing is stored for anyone ---
    Row("render a spline (bad input)", "POST", "/api/splines/render/", by(400), body={}),
    Row("fit a spline (bad input)", "POST", "/api/splines/fit/", by(400), body={}),
    Row("the splines page", "GET", "/splines/", by(200)),
    Row("a missing spline image", "GET", f"/media/splines/{'0' * 32}.png", by(404)),
    Row("a missing media file", "GET", "/media/nothing.txt", by(404)),
    # --- open to all ---
    Row("front page", "GET", "/", by(200)),
    Row("health", "GET", "/api/health/", by(200)),
    Row("OpenAPI schema", "GET", "/api/schema/", by(200)),
    Row("Swagger UI", "GET", "/api/docs/", by(200)),
    Row(
        "token for a wrong password",
        "POST",
        "/api/token/",
        by(401),  # well formed, declined: not a 400 (issue 17)
        body={"username": "alice", "password": "wrong"},
    ),
]

# --- the admin: a browser session. Anonymous, users without `is_staff` and devices go to
# the login page; staff accounts get what their permissions allow (403 otherwise). ---
LOGIN = 302
NOT_STAFF = {"anonymous": LOGIN, "alice": LOGIN, "bob": LOGIN, "device": LOGIN}


def admin_row(name: str, path: str, **staff: int) -> Row:
    """A GET of an admin page; `staff` maps staff, operator, registrar, superuser to a status."""
    assert set(staff) == {"staff", "operator", "registrar", "superuser"}, name
    return Row(name, "GET", path, {**NOT_STAFF, **staff}, admin=True)


def seen(code: int) -> dict[str, int]:
    return dict.fromkeys(("staff", "operator", "registrar", "superuser"), code)


# What each role may do with each model in the admin ("view", "add", "change", "delete");
# the superuser may do all that the model admin allows at all (ALLOWED).
ADMIN_RIGHTS: dict[str, dict[str, set[str]]] = {
    "auth.group": {},
    "authtoken.tokenproxy": {},
    "jobs.user": {"operator": {"view", "change"}},  # change: the weight alone
    "jobs.job": {"operator": {"view", "change"}},
    "jobs.fairpool": {"operator": {"view"}},
    "jobs.fairshareaccount": {"operator": {"view"}},
    "devices.device": {"operator": {"view"}, "registrar": {"view", "change", "delete"}},
}
ALLOWED: dict[str, set[str]] = {  # at all: jobs, pools, accounts and devices are never added
    "auth.group": {"view", "add", "change", "delete"},
    "authtoken.tokenproxy": {"view", "add", "change", "delete"},
    "jobs.user": {"view", "add", "change", "delete"},
    "jobs.job": {"view", "change", "delete"},  # delete: an ended job (the one shown is)
    "jobs.fairpool": {"view"},
    "jobs.fairshareaccount": {"view"},
    "devices.device": {"view", "change", "delete"},
}


def _model_rows() -> list[Row]:
    rows = []
    for model in admin.site._registry:
        label = model._meta.label_lower
        app, name = label.split(".")
        assert label in ADMIN_RIGHTS, f"{label}: a newly registered model needs a line"

        def status(actor: str, need: set[str], label: str = label) -> int:
            held = ALLOWED[label] if actor == "superuser" else ADMIN_RIGHTS[label].get(actor, set())
            return 200 if held & need and ALLOWED[label] & need else 403

        obj = "{" + f"{name}_pk" + "}"
        pages = [
            ("list", f"/admin/{app}/{name}/", {"view", "change"}),
            ("add page", f"/admin/{app}/{name}/add/", {"add"}),
            ("change page", f"/admin/{app}/{name}/{obj}/change/", {"view", "change"}),
            ("history", f"/admin/{app}/{name}/{obj}/history/", {"view", "change"}),
            ("delete page", f"/admin/{app}/{name}/{obj}/delete/", {"delete"}),
        ]
        for page, path, need in pages:
            codes = {actor: status(actor, need) for actor in seen(0)}
            rows.append(admin_row(f"admin {label} {page}", path, **codes))
        # The bare object URL redirects to its change page, for everyone (that page checks).
        rows.append(
            Row(f"admin {label} object", "GET", f"/admin/{app}/{name}/{obj}/", by(302), admin=True)
        )
    return rows


ADMIN_ROWS = [
    admin_row("admin index", "/admin/", **seen(200)),
    admin_row("admin app page", "/admin/jobs/", **{**seen(200), "staff": 404, "registrar": 404}),
    admin_row(
        "admin dashboard",
        "/admin/dashboard/",
        **{**seen(403), "operator": 200, "superuser": 200},
    ),
    admin_row(
        "admin dashboard panels",
        "/admin/dashboard/panels/",
        **{**seen(403), "operator": 200, "superuser": 200},
    ),
    admin_row(
        "admin remove-from-queue page",
        "/admin/dashboard/remove-from-queue/?users={alice_pk}",
        **{**seen(403), "operator": 200, "superuser": 200},
    ),
    admin_row(
        "admin: change alice's password",
        "/admin/jobs/user/{alice_pk}/password/",
        **{**seen(403), "superuser": 200},
    ),
    admin_row(
        "admin: change the root's password",
        "/admin/jobs/user/{root_pk}/password/",
        **{**seen(403), "superuser": 200},
    ),
    admin_row("admin own password", "/admin/password_change/", **seen(200)),
    admin_row("admin password changed", "/admin/password_change/done/", **seen(200)),
    admin_row("admin jsi18n", "/admin/jsi18n/", **seen(200)),
    admin_row(
        "admin autocomplete of job owners",
        "/admin/autocomplete/?app_label=jobs&model_name=job&field_name=owner",
        **{**seen(403), "operator": 200, "superuser": 200},  # user names: who reads accounts
    ),
    admin_row("admin view on site", "/admin/r/{user_type}/{alice_pk}/", **seen(404)),
    admin_row("admin unknown page", "/admin/no/such/page/", **seen(404)),
    Row("admin login page", "GET", "/admin/login/", by(200, **seen(302)), admin=True),
    Row("admin logout", "POST", "/admin/logout/", by(200, **NOT_STAFF), admin=True),
    *_model_rows(),
]


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    """Each actor's wrong-password login runs the hasher (PBKDF2, a third of a second or more
    each); the matrix checks who may do what, not the hasher, so the fast one Django
    recommends for tests (as tests/api/test_schemathesis.py)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(token_mode: None, make_user: Callable[..., User], settings: Any) -> dict[str, User]:
    settings.ZYPHER_DEVICE_TOKEN = DEVICE_TOKEN
    ensure_roles()  # what the migrations made, again after a transactional test's flush
    users = {name: make_user(name) for name in ("alice", "bob")}
    for name in ("staff", "operator", "registrar"):
        users[name] = make_user(name, is_staff=True)
    users["operator"].groups.add(Group.objects.get(name=OPERATOR_GROUP))
    users["registrar"].groups.add(Group.objects.get(name=REGISTRAR_GROUP))
    users["superuser"] = make_user("superuser", is_staff=True, is_superuser=True)
    users["root"] = make_user("root", is_staff=True, is_superuser=True)
    return users


def _fresh_ids(path: str, users: dict[str, User]) -> dict[str, str]:
    """Fresh objects for the names `path` uses (only those: each costs a few writes)."""
    names = {name for _, name, _, _ in string.Formatter().parse(path) if name}
    ids: dict[str, str] = {}
    for name in names:
        if name in ("alice_job", "bob_job", "alice_prediction", "alice_client_job"):
            owner = users["bob" if name == "bob_job" else "alice"]
            kind = "predict" if name == "alice_prediction" else "limited_f"
            key = f"c-{uuid.uuid4().hex[:8]}" if name == "alice_client_job" else None
            [job], _ = submit_jobs(owner, [JobSpec(kind, "x")], idempotency_key=key)
            ids[name] = key or str(job.public_id)
        elif name in ("device", "device_pk"):
            # A simulated device (no agent): it answers `status` itself.
            device, _ = pool.register_device(f"sim-{uuid.uuid4().hex[:8]}", "qpu", 4, "addr1")
            ids[name] = device.name if name == "device" else str(device.pk)
        elif name in ("alice_program", "bob_program"):
            owner = users[name.split("_")[0]]
            program, _, _ = create_qpu_program(owner, [QpuJob(["h 0"], 1, 1)], device_type="qpu")
            ids[name] = str(program.public_id)
        elif name in ("alice_pk", "user_pk"):
            ids[name] = str(users["alice"].pk)
        elif name == "root_pk":
            ids[name] = str(users["root"].pk)
        elif name == "user_type":
            from django.contrib.contenttypes.models import ContentType

            ids[name] = str(ContentType.objects.get_for_model(User).pk)
        elif name == "job_pk":  # an ended job: the admin may delete it
            [job], _ = submit_jobs(users["alice"], [JobSpec("limited_f", 1)])
            Job.objects.filter(pk=job.pk).update(status="succeeded")
            ids[name] = str(job.pk)
        elif name == "fairpool_pk":
            submit_jobs(users["alice"], [JobSpec("limited_f", 1)])
            ids[name] = str(FairPool.objects.order_by("pk").first().pk)  # type: ignore[union-attr]
        elif name == "fairshareaccount_pk":
            submit_jobs(users["alice"], [JobSpec("limited_f", 1)])
            ids[name] = str(FairShareAccount.objects.order_by("pk").first().pk)  # type: ignore[union-attr]
        elif name == "group_pk":
            ids[name] = str(Group.objects.get(name=OPERATOR_GROUP).pk)
        elif name == "tokenproxy_pk":
            ids[name] = str(users["alice"].pk)  # a token's admin key is its user's
        else:
            raise KeyError(name)
    return ids


def _request(row: Row, actor: str, users: dict[str, User]) -> Any:
    path = row.path.format(**_fresh_ids(row.path, users))
    body = row.body
    if isinstance(body, dict):
        body = {k: v.format(actor=actor) if isinstance(v, str) else v for k, v in body.items()}
    headers = {**(WITH_TOKEN if actor == "device" else {}), **(row.headers or {})}
    if row.admin:
        client = Client()
        if actor in users:
            client.force_login(users[actor])
        return client.generic(row.method, path, headers=headers or None)
    client = APIClient()
    if actor in users:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=users[actor]).key}")
    return getattr(client, row.method.lower())(path, body, format="json", headers=headers or None)


def _outcomes(row: Row, users: dict[str, User], *, rolled_back: bool = True) -> dict[str, Any]:
    """Each actor's status and the start of its body. Each request runs in a savepoint
    rolled back afterwards: no actor sees another's changes, and one test per row sets
    the world up once."""
    outcomes = {}
    for actor in ACTORS:
        if rolled_back:
            with transaction.atomic():
                response = _request(row, actor, users)
                transaction.set_rollback(True)
        else:  # /predict's threads must see the rows: no transaction held open
            response = _request(row, actor, users)
        queue._pool_ids.clear()  # pool ids cached by jobs.queue may have been rolled back
        outcome: Any = response.status_code
        if row.admin and row.method == "GET" and outcome == LOGIN and actor in NOT_STAFF:
            outcome = LOGIN if response["Location"].startswith("/admin/login/") else "elsewhere"
        outcomes[actor] = (outcome, getattr(response, "content", b"")[:200])
    return outcomes


def _check(row: Row, users: dict[str, User], expected: dict[str, int], **options: Any) -> None:
    outcomes = _outcomes(row, users, **options)
    wrong = {actor: got for actor, got in outcomes.items() if got[0] != expected[actor]}
    assert not wrong, f"expected {expected}, got {wrong}"


ALL_ROWS = ROWS + ADMIN_ROWS
# /predict and the event stream read in their own threads: their rows are committed.
PREDICT_ROWS = [
    row for row in ALL_ROWS if row.path.startswith("/predict") or row.path.endswith("/events")
]
SYNC_ROWS = [row for row in ALL_ROWS if row not in PREDICT_ROWS]
OPEN_ROWS = [row for row in SYNC_ROWS if row.open_mode is not None]


@pytest.mark.parametrize("row", SYNC_ROWS, ids=[row.name for row in SYNC_ROWS])
def test_access(row: Row, world: dict[str, User]) -> None:
    _check(row, world, row.expected)


@pytest.mark.parametrize("row", OPEN_ROWS, ids=[row.name for row in OPEN_ROWS])
def test_access_in_open_mode(row: Row, world: dict[str, User], settings: Any) -> None:
    settings.ZYPHER_OPEN_MODE = True
    assert row.open_mode is not None
    _check(row, world, row.open_mode)


@pytest.fixture
def predict_threads_closed() -> Iterator[None]:
    """/predict reads in its own threads: their connections must not outlive the test."""
    yield
    close_db_connections()


@pytest.mark.parametrize("open_mode_on", [False, True], ids=["token mode", "open mode"])
@pytest.mark.parametrize("row", PREDICT_ROWS, ids=[row.name for row in PREDICT_ROWS])
def test_predict_access(
    row: Row,
    open_mode_on: bool,
    transactional_db: None,
    predict_threads_closed: None,
    world: dict[str, User],
    settings: Any,
) -> None:
    # The async views read in their own thread, so the rows must be committed (each
    # actor's request makes its own prediction: nothing to roll back between them).
    settings.ZYPHER_OPEN_MODE = open_mode_on
    expected = row.open_mode if open_mode_on else row.expected
    assert expected is not None
    _check(row, world, expected, rolled_back=False)


def _routes(patterns: list[URLPattern | URLResolver], prefix: str = "") -> Iterator[str]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern)


def test_every_route_has_a_row() -> None:
    """Each route the resolver knows is requested by some row (by every actor)."""
    covered = {_bare(resolve(row.path.split("?")[0].format_map(_Any())).route) for row in ALL_ROWS}
    missing = {_bare(route) for route in _routes(get_resolver().url_patterns)} - covered
    assert not missing, f"routes without a row in the access matrix: {sorted(missing)}"


def _bare(route: str) -> str:
    # ResolverMatch.route drops a nested regex's anchors; the walk keeps them.
    return route.replace("^", "").replace("$", "")


class _Any(dict[str, str]):
    """Fills a row's path with a placeholder that every converter accepts."""

    def __missing__(self, key: str) -> str:
        return "1" if key.endswith("_pk") or key == "user_type" else str(uuid.uuid4())


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
    root = APIClient()
    root.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=world['superuser']).key}")
    created = root.post("/api/users/", {"user_id": "dave", "weight": 1}, format="json")
    token = created.json()["token"]
    for response in (root.get("/api/users/dave/"), root.get("/api/jobs/?user_id=dave")):
        assert token not in response.content.decode()


def test_admin_actions_need_the_csrf_token(world: dict[str, User]) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(world["superuser"])
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
    root = APIClient()
    root.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=world['superuser']).key}")
    created = root.post(
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
