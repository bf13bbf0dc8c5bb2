"""The QPU exercise's job routes (`POST /jobs`, `/job`) check `instructions` as the main API
checks `input`: what a JSON column cannot store is a 400 naming the field, not a 500 or a
row that reads back differently on another database."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.models import Job

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_mode")]


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("route", ["/jobs", "/job"])
@pytest.mark.parametrize(
    ("instructions", "message"),
    [
        ([{"gate": "h\x00"}], "instructions may not contain the character U+0000."),
        ([{"gate\x00": "h"}], "instructions may not contain the character U+0000."),
        ([nested(80)], "instructions is nested deeper than 64 levels."),
    ],
)
def test_instructions_a_json_column_cannot_store_are_refused_and_nothing_is_queued(
    api_client: APIClient, route: str, instructions: list[Any], message: str
) -> None:
    id_field = "id" if route == "/jobs" else "job_id"
    body = {id_field: "j1", "user_id": "alice", "instructions": instructions}

    response = api_client.post(route, body, format="json")

    assert response.status_code == 400, response.content
    assert response.json() == {"instructions": [message]}
    assert not Job.objects.exists()


def test_storable_instructions_are_kept_as_sent(api_client: APIClient) -> None:
    instructions = [{"gate": "h", "qubits": [0]}, nested(60)]
    body = {"id": "j1", "user_id": "alice", "instructions": instructions}

    assert api_client.post("/jobs", body, format="json").status_code == 201
    stored = Job.objects.get().input
    assert isinstance(stored, dict) and stored["instructions"] == instructions
