"""A job as the server shows it, and the Server-Sent Events that update it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Job:
    """One job: `GET /api/jobs/<id>/`. `data` keeps every field the server sent."""

    id: str
    status: str
    kind: str = ""
    input: Any = None
    result: Any = None
    error: str = ""
    queue_position: int | None = None
    progress: float | None = None
    progress_message: str = ""
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=str(data["id"]),
            status=str(data.get("status", "")),
            kind=str(data.get("kind") or ""),
            input=data.get("input"),
            result=data.get("result"),
            error=str(data.get("error") or ""),
            queue_position=data.get("queue_position"),
            progress=data.get("progress"),
            progress_message=str(data.get("progress_message") or ""),
            data=dict(data),
        )

    def updated(self, changes: dict[str, Any]) -> Job:
        """This job with the fields of an event applied."""
        return Job.from_json({**self.data, "id": self.id, "status": self.status, **changes})

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class ServerSentEvent:
    """One event of a `text/event-stream` (the WHATWG fields we use)."""

    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data) if self.data else None


def parse_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Events from the stream's lines (without their line ends): fields accumulate until
    a blank line dispatches them; `:` lines are comments (keep-alives)."""
    event, event_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data or event:
                yield ServerSentEvent(event or "message", "\n".join(data), event_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
    if data:  # a stream cut before its last blank line
        yield ServerSentEvent(event or "message", "\n".join(data), event_id)


def apply_event(job: Job, event: ServerSentEvent) -> Job:
    """The job after one event. An event's data is a JSON object of job fields (at least
    those that changed); an event named for a status says that status when its data does not."""
    try:
        changes = event.json()
    except ValueError:
        return job
    if not isinstance(changes, dict):
        changes = {}
    if "status" not in changes and event.event in {"queued", "running", *FINAL_STATUSES}:
        changes["status"] = event.event
    changes.pop("id", None)
    return job.updated(changes) if changes else job
