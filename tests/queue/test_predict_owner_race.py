"""/predict's submit when its user is deleted or deactivated while the submit waits for the
user's row (PostgreSQL): the answer is the API's (a JSON 4xx naming the problem, or, for a
user named in open mode, the user created again), never a 500.

This session holds the user's row (a delete or a deactivation not yet committed) until the
submit waits on it, so the two overlap for certain; what is asserted is the answer and what
happened to the jobs and counters.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from jobs.invariants import find_violations
from jobs.models import Job, User
from jobs.predict.hub import close_db_connections
from jobs.queue import delete_users
from tests.support.processes import wait_until
from tests.support.sessions import sessions_waiting_on_locks

pytest_plugins = ["tests.support.api_fixtures"]
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def predict_threads_let_go() -> Iterator[None]:
    yield
    close_db_connections()  # the flush and the database's drop need them gone


def post_while(
    hold: Callable[[], object], path: str, headers: dict[str, str], body: dict[str, Any]
) -> Any:
    """POST `path` (/predict in asynchronous mode) while this session runs `hold`
    uncommitted; commit once the submit waits on a lock. Returns the response."""
    answers: list[Any] = []
    with transaction.atomic():
        hold()
        runner = threading.Thread(
            target=lambda: answers.append(
                Client(raise_request_exception=False).post(
                    path,
                    json.dumps(body),
                    content_type="application/json",
                    headers={"Async-Mode": "true", **headers},
                )
            )
        )
        runner.start()
        wait_until(lambda: sessions_waiting_on_locks() >= 1, 60, "the submit to wait")
    runner.join(timeout=120)
    assert answers, "the request did not end"
    return answers[0]


@pytest.mark.usefixtures("open_mode")
def test_a_named_user_deleted_while_its_prediction_waits_is_created_again() -> None:
    zed = User.objects.create(username="zed")

    response = post_while(
        lambda: delete_users([zed.pk]), "/predict", {}, {"input": "x", "user_id": "zed"}
    )

    assert response.status_code == 202, response.content
    job = Job.objects.get()
    assert job.owner.username == "zed" and job.owner_id != zed.pk and job.owner.is_active
    assert find_violations() == []


@pytest.mark.usefixtures("open_mode")
def test_a_named_user_deactivated_while_its_prediction_waits_is_refused_403() -> None:
    yan = User.objects.create(username="yan")

    response = post_while(
        lambda: User.objects.filter(pk=yan.pk).update(is_active=False),
        "/predict",
        {},
        {"input": "x", "user_id": "yan"},
    )

    assert response.status_code == 403, response.content
    assert response.json() == {"error": "User 'yan' is deactivated and cannot submit jobs."}
    assert not Job.objects.exists()
    assert find_violations() == []


def test_a_token_user_deleted_while_its_prediction_waits_answers_401(make_user: Any) -> None:
    xia = make_user("xia")
    token = xia.auth_token.key

    response = post_while(
        lambda: delete_users([xia.pk]),
        "/predict",
        {"Authorization": f"Token {token}"},
        {"input": "x"},
    )

    assert response.status_code == 401, response.content
    assert "no longer exists" in response.json()["error"]
    assert response.headers["WWW-Authenticate"] == "Token"
    assert not Job.objects.exists() and not User.objects.filter(username="xia").exists()
    assert find_violations() == []


@pytest.mark.usefixtures("open_mode")
def test_a_qpu_job_whose_user_is_deactivated_while_it_waits_is_refused_403() -> None:
    """`POST /jobs` reads its named user's row first (acting_user), then submits."""
    wu = User.objects.create(username="wu")

    response = post_while(
        lambda: User.objects.filter(pk=wu.pk).update(is_active=False),
        "/jobs",
        {},
        {"id": "j1", "user_id": "wu", "instructions": [{"gate": "h"}]},
    )

    assert response.status_code == 403, response.content
    assert response.json() == {"error": "User 'wu' is deactivated and cannot submit jobs."}
    assert not Job.objects.exists()
    assert find_violations() == []


@pytest.mark.usefixtures("open_mode")
def test_a_qpu_job_whose_named_user_is_deleted_while_it_waits_answers_409() -> None:
    vic = User.objects.create(username="vic")

    response = post_while(
        lambda: delete_users([vic.pk]),
        "/jobs",
        {},
        {"id": "j1", "user_id": "vic", "instructions": [{"gate": "h"}]},
    )

    assert response.status_code == 409, response.content
    assert "no longer exists" in response.json()["error"]
    assert not Job.objects.exists()
    assert find_violations() == []
