"""The client's reading of `GET /api/jobs/<id>/events` (text/event-stream), on the bytes
of a stream as the WHATWG rules define them. (The end-to-end waits in
test_client_library.py run against whichever the server offers: the stream or polling.)"""

from __future__ import annotations

from zypher_client import Job
from zypher_client.jobs import ServerSentEvent, apply_event, parse_events

STREAM = """: keep-alive

event: queued
data: {"status": "queued", "queue_position": 2}

event: running
data: {"status": "running", "queue_position": null,
data:  "progress": 0.5, "progress_message": "half"}
id: 7

event: succeeded
data: {"result": {"x": 5, "y": 25}}
"""


def test_events_are_dispatched_at_blank_lines_and_comments_skipped() -> None:
    events = list(parse_events(STREAM.splitlines()))

    assert [event.event for event in events] == ["queued", "running", "succeeded"]
    assert events[1].id == "7"
    assert events[1].json()["progress"] == 0.5  # two data lines joined by a newline
    assert events[2].json() == {"result": {"x": 5, "y": 25}}  # the last, cut before its blank


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
