"""A job's own `callback_url` end to end: submitted through the client, delivered by the
package's real dispatcher to a real HTTP receiver on a free loopback port (the gateway's
development allow-list: loopback with an explicit port), retried after a failed answer,
refused at submit for a host the allow-list or the SSRF guard refuses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from zypher_client import BadRequest, Client, Forbidden

from tests.support.device_fixtures import CallbackReceiver
from tests.support.processes import Gateway, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    yield receiver
    receiver.close()


def delivered(zypher: Client, job_id: str) -> bool:
    return zypher.get(job_id).data["callback_status"] == "delivered"


def test_a_job_is_called_back_once_when_it_succeeds_and_once_when_it_fails(
    server: Gateway, user: str, receiver: CallbackReceiver
) -> None:
    with Client(server.url, user=user) as zypher:
        ok = zypher.submit(5, callback_url=receiver.url)
        bad = zypher.submit(3, kind="boom", callback_url=receiver.url)
        assert (ok.data["callback_url"], ok.data["callback_status"]) == (receiver.url, "pending")
        wait_until(lambda: delivered(zypher, ok.id), 60, "the success's callback")
        wait_until(lambda: delivered(zypher, bad.id), 60, "the failure's callback")
        # A later job's delivery means the courier has passed over the first two again.
        later = zypher.submit(7, callback_url=receiver.url)
        wait_until(lambda: delivered(zypher, later.id), 60, "the later callback")
        shown = zypher.get(ok.id).data
        plain = zypher.submit(1)

    assert receiver.attempts == 3
    bodies = {body["id"]: body for body in receiver.bodies}
    assert sorted(bodies) == sorted([ok.id, bad.id, later.id])
    # The body is the job as GET shows it, as it was when it was posted (its callback then
    # pending; its url a path: the dispatcher does not know the gateway's address).
    body = bodies[ok.id]
    assert body["status"] == "succeeded" and body["result"] == {"x": 5, "y": 25}
    assert (body["callback_url"], body["callback_status"]) == (receiver.url, "pending")
    assert shown["url"] == server.url + body["url"]
    differing = {key for key in shown.keys() | body.keys() if shown.get(key) != body.get(key)}
    assert differing == {"url", "callback_status"}
    assert bodies[bad.id]["status"] == "failed" and "boom on 3" in bodies[bad.id]["error"]
    assert (plain.data["callback_url"], plain.data["callback_status"]) == (None, "none")


def test_a_callback_answered_500_is_retried_until_delivered(server: Gateway, user: str) -> None:
    receiver = CallbackReceiver(fail_first=1)
    try:
        with Client(server.url, user=user) as zypher:
            job = zypher.submit(2, callback_url=receiver.url)
            wait_until(lambda: delivered(zypher, job.id), 60, "the retried callback")
    finally:
        receiver.close()

    assert receiver.attempts == 2  # the 500, then the 204
    assert [body["id"] for body in receiver.bodies] == [job.id]
    assert receiver.bodies[0]["result"] == {"x": 2, "y": 4}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local or cloud metadata address"),
        ("http://metadata.google.internal/", "link-local or cloud metadata address"),
        ("http://example.com/hook", "is not allowed (ZYPHER_CALLBACK_ALLOWED_HOSTS:"),
        # The development list needs an explicit port.
        ("http://127.0.0.1/hook", "callback host '127.0.0.1' is not allowed"),
    ],
)
def test_a_callback_to_a_refused_host_is_a_403_naming_it_and_queues_nothing(
    server: Gateway, user: str, url: str, problem: str
) -> None:
    """Well formed, but a destination this gateway may not call: 403, as for programs."""
    with Client(server.url, user=user) as zypher:
        with pytest.raises(Forbidden) as refused:
            zypher.submit(1, callback_url=url)
        with pytest.raises(Forbidden) as refused_in_bulk:
            zypher.submit_many([{"input": 1}, {"input": 2, "callback_url": url}])
        assert zypher.jobs() == []

    assert refused.value.status == 403
    assert refused.value.message.startswith("callback_url: ")
    assert problem in refused.value.message
    assert problem in str(refused_in_bulk.value.body["items"]["1"]["callback_url"])


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://127.0.0.1:21/hook", "must be an http(s) URL"),
        ("not a url", "must be an http(s) URL"),
    ],
)
def test_a_callback_url_that_is_not_an_http_url_is_a_400_naming_it(
    server: Gateway, user: str, url: str, problem: str
) -> None:
    with Client(server.url, user=user) as zypher:
        with pytest.raises(BadRequest) as refused:
            zypher.submit(1, callback_url=url)
        assert zypher.jobs() == []
    assert refused.value.status == 400
    assert problem in refused.value.message


def test_a_callback_url_over_2000_characters_is_refused(server: Gateway, user: str) -> None:
    with Client(server.url, user=user) as zypher, pytest.raises(BadRequest) as refused:
        zypher.submit(1, callback_url="http://127.0.0.1:9/" + "a" * 2000)
    assert "no more than 2000 characters" in refused.value.message
