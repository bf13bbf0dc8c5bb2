"""`Client.wait` and `zypher submit --wait` against the server's real event stream
(`GET /api/jobs/<id>/events`): the progress a running handler reports reaches the waiter
through the stream, not through polls of `GET /api/jobs/<id>/`.

The requests are seen on the wire: a real `httpx.HTTPTransport` that writes down each
request it sends (the library), a TCP proxy in front of the gateway (the console script).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from zypher_client import Client, Job

from tests.client.helpers import StderrLines, hold_input, release, zypher_command
from tests.client.proxy import AnswerLosingProxy
from tests.support.processes import Gateway, wait_until

pytestmark = pytest.mark.e2e


class RecordingTransport(httpx.HTTPTransport):
    """The ordinary HTTP transport, remembering the method and path of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def test_wait_takes_a_running_jobs_progress_from_the_event_stream(
    server: Gateway, user: str, release_dir: Path
) -> None:
    """The handler reports 40% and holds; the waiter sees it, then releases the job."""
    transport = RecordingTransport()
    seen: list[Job] = []

    def on_update(job: Job) -> None:
        seen.append(job)
        if job.status == "running" and job.progress is not None:
            release(release_dir, "p")

    with Client(server.url, user=user, transport=transport) as zypher:
        spec = {**hold_input(release_dir, "p"), "progress": 0.4, "message": "4 of 10"}
        job = zypher.submit(spec, kind="hold")
        transport.requests.clear()

        done = zypher.wait(job.id, timeout=60, on_update=on_update)

    assert done.status == "succeeded" and done.result == {"held": "p", "released": True}
    running = [(s.status, s.progress, s.progress_message) for s in seen if s.progress]
    assert running[0] == ("running", 0.4, "4 of 10")
    detail, events = f"GET /api/jobs/{job.id}/", f"GET /api/jobs/{job.id}/events"
    # One read, the stream (which brought the progress and the end), one read of the
    # whole record: no polls in between.
    assert transport.requests == [detail, events, detail]


def test_wait_on_an_ended_job_reads_its_one_ended_event(server: Gateway, user: str) -> None:
    transport = RecordingTransport()
    with Client(server.url, user=user, transport=transport) as zypher:
        job = zypher.submit(3, kind="boom")
        first = zypher.wait(job.id, timeout=60)
        transport.requests.clear()

        again = zypher.wait(job.id, timeout=60)

    assert (first.status, again.status) == ("failed", "failed")
    assert "boom on 3" in again.error
    assert transport.requests == [f"GET /api/jobs/{job.id}/"]  # ended: nothing to follow


def test_the_cli_shows_progress_from_the_event_stream(
    server: Gateway, user: str, release_dir: Path
) -> None:
    proxy = AnswerLosingProxy(urlsplit(server.url).port or 80, lose=0)  # writes requests down
    spec = {**hold_input(release_dir, "c"), "progress": 0.25, "message": "a quarter"}
    command = [*zypher_command(), "--url", proxy.url, "--user", user, "submit"]
    command += ["--kind", "hold", json.dumps(spec), "--wait"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = StderrLines(process)
    saw, seen = stderr.saw, stderr.seen

    try:
        wait_until(lambda: saw("running 25%: a quarter"), 60, "the CLI to show the progress")
        release(release_dir, "c")
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        proxy.close()

    assert process.returncode == 0, seen
    assert json.loads(stdout) == {"held": "c", "released": True}
    job_id = seen[0].split()[0]
    detail, events = f"GET /api/jobs/{job_id}/", f"GET /api/jobs/{job_id}/events"
    assert proxy.request_lines() == ["POST /api/jobs/", detail, events, detail]
