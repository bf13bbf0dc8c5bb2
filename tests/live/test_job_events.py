"""`GET /api/jobs/<id>/events` end to end (gunicorn and run_dispatcher): one event per
change of state, from queued through running with progress to ended with the result;
the same access rules as the job itself."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
import requests
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from jobs.models import Job, User
from jobs.predict.hub import close_db_connections
from jobs.queue import JobSpec, submit_jobs
from tests.support.processes import wait_until


def read_events(url: str, into: list[tuple[str, dict[str, Any]]], timeout: float = 60) -> None:
    """Append (event type, data) for every event of the stream until it ends."""
    with requests.get(url, stream=True, timeout=timeout) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        event, data = "", ""
        for raw in response.iter_lines():
            line = raw.decode()
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
            elif line == "" and data:
                into.append((event, json.loads(data)))
                event, data = "", ""


@pytest.mark.e2e
def test_a_stream_follows_a_job_from_queued_through_progress_to_its_result(
    gateway, start_dispatcher
):
    created = gateway.post("/api/jobs/", {"user_id": "ann", "kind": "limited_f", "input": 7})
    job_id = created.json()["id"]
    assert created.json()["progress"] is None  # nothing reported before it runs
    events: list[tuple[str, dict[str, Any]]] = []
    reader = threading.Thread(
        target=read_events, args=(f"{gateway.url}/api/jobs/{job_id}/events", events)
    )
    reader.start()
    wait_until(lambda: events, 20, "the first event")
    assert events[0][0] == "queued" and events[0][1]["queue_position"] == 0
    start_dispatcher(devices=1, ZYPHER_LIMITED_F_SECONDS="3")
    # The job's own view shows the progress while it runs.
    seen = wait_until(
        lambda: (
            (body := gateway.get(f"/api/jobs/{job_id}/").json())["status"] == "running"
            and body["progress"] is not None
            and body
        ),
        30,
        "progress in the job",
    )
    assert 0 <= seen["progress"] <= 1 and seen["progress_message"].endswith("rounds")
    reader.join(timeout=60)
    assert not reader.is_alive(), "the stream did not end with the job"
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "queued" and kinds[-1] == "ended" and kinds.count("ended") == 1
    running = [data for kind, data in events if kind == "running"]
    reported = [data["progress"] for data in running if data["progress"] is not None]
    assert len(reported) >= 2 and reported == sorted(reported) and reported[-1] < 1
    assert all(data["progress_message"].endswith("rounds") for data in running[1:])
    ended = events[-1][1]
    assert ended["status"] == "succeeded" and ended["result"] == {"x": 7, "y": 49}
    # One event per change: no two events in a row say the same.
    assert all(a != b for a, b in zip(events, events[1:], strict=False))
    # A stream opened after the end is that one event.
    again: list[tuple[str, dict[str, Any]]] = []
    read_events(f"{gateway.url}/api/jobs/{job_id}/events", again)
    assert again == [("ended", ended)]


@pytest.mark.django_db(transaction=True)
def test_the_stream_has_the_access_rules_of_the_job(settings):
    settings.ZYPHER_OPEN_MODE = False
    owner = User.objects.create(username="eve")
    other = User.objects.create(username="fay")
    [job], _ = submit_jobs(owner, [JobSpec(kind="noop", input=1, device_type="cpu")])
    Job.objects.filter(pk=job.pk).update(status="cancelled")
    owner_token, other_token = (Token.objects.create(user=user).key for user in (owner, other))
    try:
        asyncio.run(check_access(str(job.public_id), owner_token, other_token))
    finally:
        close_db_connections()  # the view's database threads: the test database is dropped


async def check_access(job_id: str, owner_token: str, other_token: str) -> None:
    client = AsyncClient()
    url = f"/api/jobs/{job_id}/events"
    anonymous = await client.get(url)
    assert anonymous.status_code == 401 and "Token" in anonymous.json()["error"]
    other = await client.get(url, headers={"Authorization": f"Token {other_token}"})
    assert other.status_code == 404 and other.json()["error"]
    unknown = await client.get(
        "/api/jobs/00000000-0000-4000-8000-000000000000/events",
        headers={"Authorization": f"Token {owner_token}"},
    )
    assert unknown.status_code == 404
    own = await client.get(url, headers={"Authorization": f"Token {owner_token}"})
    assert own.status_code == 200 and own["Content-Type"] == "text/event-stream"
    body = b"".join([chunk async for chunk in own.streaming_content]).decode()  # type: ignore[attr-defined]
    assert body.startswith("id: 1\nevent: ended\ndata: ") and '"status":"cancelled"' in body


def test_the_schema_declares_the_event_stream(client):
    schema = client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    event = schema["components"]["schemas"]["JobEvent"]["properties"]
    assert {"status", "queue_position", "progress", "progress_message", "result"} <= set(event)
