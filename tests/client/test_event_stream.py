"""The client's reading of `GET /api/jobs/<id>/events` (text/event-stream), on the bytes
of a stream as the server writes them (README "Job events") and as the WHATWG rules
allow them. (test_wait_follows_the_stream.py follows the server's real stream.)"""

from __future__ import annotations

from zypher_client import Job
from zypher_client.jobs import ServerSentEvent, apply_event, parse_events

STREAM = """: keep-alive

id: 1
event: queued
data: {"id":"j1","status":"queued","queue_position":2,"progress":null,"progress_message":"","attempts":0,"result":null,"error":""}

event: running
data: {"id": "j1", "status": "running", "queue_position": null, "attempts": 1,
data:  "progress": 0.5, "progress_message": "half", "result": null, "error": ""}
id: 7

id: 8
event: ended
data: {"id":"j1","status":"succeeded","queue_position":null,"progress":0.5,"progress_message":"half","attempts":1,"result":{"x":5,"y":25},"error":""}
"""


def test_events_are_dispatched_at_blank_lines_and_comments_skipped() -> None:
    events = list(parse_events(STREAM.splitlines()))

    assert [event.event for event in events] == ["queued", "running", "ended"]
    assert events[1].id == "7"
    assert events[1].json()["progress"] == 0.5  # two data lines joined by a newline
    assert events[2].json()["result"] == {"x": 5, "y": 25}  # the last, cut before its blank


def test_each_event_updates_the_job_and_a_status_named_event_sets_the_status() -> None:
    job = Job.from_json({"id": "j1", "status": "queued", "queue_position": 5})
    states = []
    for event in parse_events(STREAM.splitlines()):
        job = apply_event(job, event)
        states.append((job.status, job.queue_position, job.progress, job.progress_message))

    assert states == [
        ("queued", 2, None, ""),
        ("running", None, 0.5, "half"),
        ("succeeded", None, 0.5, "half"),
    ]
    assert job.done and job.result == {"x": 5, "y": 25}


def test_an_event_that_is_not_json_changes_nothing() -> None:
    job = Job.from_json({"id": "j1", "status": "running"})
    assert apply_event(job, ServerSentEvent("running", "not json")) == job
