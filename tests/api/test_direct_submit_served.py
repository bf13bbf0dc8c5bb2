"""The direct submit path (jobs.api.direct_submit) served by gunicorn on PostgreSQL:
real sockets, real connections cut by the server."""

from __future__ import annotations

import json
import socket
from typing import Any, cast
from urllib.parse import urlsplit

import psycopg
import pytest

from jobs.api.direct_submit import CONNECTIONS
from jobs.models import FairShareAccount, Job
from jobs.notifications import listener_conninfo
from tests.support.processes import Gateway

_WEB = "FROM pg_stat_activity WHERE application_name = 'zypher-web'"


def raw_exchange(gateway: Gateway, data: bytes, answers: int = 1) -> bytes:
    """`data` sent on one socket; the server's bytes until `answers` responses came or it
    closed the connection (0: the client goes away at once, mid-body if `data` is short)."""
    parts = urlsplit(gateway.url)
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(data)
        out = b""
        while answers and (out.count(b"HTTP/1.") < answers or not out.endswith(b"}")):
            if not (chunk := sock.recv(65536)):
                break
            out += chunk
        return out


def request(body: bytes, *headers: str, http: str = "1.1") -> bytes:
    lines = [f"POST /api/jobs/ HTTP/{http}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.postgres
def test_served_submits_survive_cut_connections_and_odd_requests(gateway: Gateway) -> None:
    def submit(n: int) -> Any:
        return gateway.post("/api/jobs/", {"user_id": "alice", "input": n})

    first = submit(1)
    assert first.status_code == 201, first.text
    with psycopg.connect(**listener_conninfo(), autocommit=True) as admin:
        opened = admin.execute(f"SELECT count(*) {_WEB}").fetchone()
        assert opened is not None and opened[0] >= 1  # the direct path answered
        # A restart's worth: every idle connection of the path ended by the server.
        admin.execute(f"SELECT pg_terminate_backend(pid) {_WEB}")
        after_cut = [submit(n) for n in (2, 3)]
        assert [answer.status_code for answer in after_cut] == [201, 201]

        # A client gone mid-body, a body short of its length: nothing queued, no harm.
        body = json.dumps({"user_id": "alice", "input": 99}).encode()
        head = ("Host: 127.0.0.1", "Content-Type: application/json")
        raw_exchange(gateway, request(body[:10], *head, f"Content-Length: {len(body)}"), answers=0)
        # Two submits on one kept-alive connection, then HTTP/1.0 without a Host.
        two = request(body, *head, f"Content-Length: {len(body)}") * 2
        answers = raw_exchange(gateway, two, 2)
        assert answers.count(b"HTTP/1.1 201") == 2, answers
        bare = raw_exchange(
            gateway,
            request(
                body, "Content-Type: application/json", f"Content-Length: {len(body)}", http="1.0"
            ),
        )
        assert bare.startswith(b"HTTP/1.1 201"), bare  # the socket's address is the host
        backends = admin.execute(f"SELECT count(*) {_WEB}").fetchone()
        assert backends is not None and 1 <= backends[0] <= 2 * CONNECTIONS  # 2 workers

    inputs = sorted(cast(list[int], list(Job.objects.values_list("input", flat=True))))
    assert inputs == [1, 2, 3, 99, 99, 99]
    assert FairShareAccount.objects.get(user__username="alice").queued_count == Job.objects.count()
    assert gateway.get("/api/health/").status_code == 200
