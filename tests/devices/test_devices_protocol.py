"""Signed messages between gateway and agents: forged, stale, replayed, oversize and
malformed messages are refused with a reason; the mock QPU's counts fit the device."""

from __future__ import annotations

import json
import random
import time

import pytest

from devices import protocol
from devices.qpu.mock import QpuInputError, measure

pytestmark = pytest.mark.one_pass

SECRET = "s" * 64


def signed(body: bytes, **kwargs: object) -> dict[str, str]:
    return protocol.sign(SECRET, "POST", "/commands", body, **kwargs)  # type: ignore[arg-type]


def verify(body: bytes, headers: dict[str, str], nonces=None, **kwargs: object) -> dict:
    return protocol.verify(
        SECRET,
        "POST",
        "/commands",
        body,
        headers,
        nonces or protocol.MemoryNonceStore(),
        **kwargs,  # type: ignore[arg-type]
    )


def refusal(body: bytes, headers: dict[str, str], **kwargs: object) -> protocol.ProtocolError:
    with pytest.raises(protocol.ProtocolError) as caught:
        verify(body, headers, **kwargs)
    return caught.value


def test_a_signed_message_is_accepted_and_parsed():
    body = protocol.encode({"command": "ping"})
    assert verify(body, signed(body)) == {"command": "ping"}


def test_a_message_signed_with_another_secret_is_refused():
    body = protocol.encode({"command": "ping"})
    headers = protocol.sign("another secret", "POST", "/commands", body)
    error = refusal(body, headers)
    assert (error.status, error.message) == (401, "bad signature")


def test_a_tampered_body_or_another_path_is_refused():
    body = protocol.encode({"command": "ping"})
    headers = signed(body)
    assert refusal(protocol.encode({"command": "terminate"}), headers).message == "bad signature"
    with pytest.raises(protocol.ProtocolError, match="bad signature"):
        protocol.verify(SECRET, "POST", "/other", body, headers, protocol.MemoryNonceStore())


def test_an_unsigned_message_is_refused():
    error = refusal(b"{}", {})
    assert error.status == 401 and "unsigned" in error.message


def test_a_stale_message_is_refused_even_with_a_good_signature():
    body = protocol.encode({"command": "ping"})
    headers = signed(body, timestamp=int(time.time()) - 120)
    error = refusal(body, headers, max_age=30)
    assert error.status == 401 and error.message.startswith("stale message")


def test_a_replayed_message_is_refused():
    body = protocol.encode({"command": "ping"})
    headers = signed(body)
    nonces = protocol.MemoryNonceStore()
    verify(body, headers, nonces)
    with pytest.raises(protocol.ProtocolError, match="replayed"):
        verify(body, headers, nonces)


def test_an_oversize_message_is_refused_before_anything_else():
    body = b"x" * (protocol.MAX_COMMAND_BYTES + 1)
    error = refusal(body, {})
    assert error.status == 413


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"ping"', b"\xff\xfe"])
def test_a_signed_body_that_is_not_a_json_object_is_refused(body):
    error = refusal(body, signed(body))
    assert error.status == 400


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"command": "explode"}, "unknown command 'explode'"),
        ({"command": 7}, "malformed command"),
        ({}, "'command' is a required property"),
        ({"command": "calculate", "args": {"x": "soon", "msg": "hi"}}, "x: 'soon' is not of type"),
        ({"command": "calculate", "args": {"x": 1}}, "'msg' is a required property"),
        ({"command": "calculate", "args": {"x": -1, "msg": "hi"}}, "less than the minimum"),
        ({"command": "ping", "args": {"extra": 1}}, "malformed command"),
        (
            {
                "command": "run",
                "args": {"job_id": "x", "fencing_token": 1, "kind": "qpu", "input": {}},
            },
            "job_id",
        ),
    ],
)
def test_malformed_commands_are_refused_with_the_reason(message, reason):
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.parse_command(message)
    assert caught.value.status == 400
    assert reason in caught.value.message


def test_a_well_formed_command_keeps_its_arguments():
    command = protocol.parse_command({"command": "calculate", "args": {"x": 2.5, "msg": "hello"}})
    assert command == protocol.Command("calculate", {"x": 2.5, "msg": "hello"})


@pytest.mark.parametrize(
    "report",
    [
        {"report": "gossip"},
        {
            "report": "job_finished",
            "job_id": "not-a-uuid",
            "fencing_token": 1,
            "succeeded": True,
            "duration": 1,
        },
        {"report": "state", "state": "busy"},
        {
            "report": "job_returned",
            "job_id": "6f0c0000-0000-4000-8000-000000000000",
            "fencing_token": 0,
            "reason": "x",
        },
    ],
)
def test_malformed_reports_are_refused(report):
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.parse_report(report)
    assert caught.value.status == 400


def test_the_mock_qpu_counts_bit_strings_of_the_device_size_summing_to_the_shots():
    for size, shots in [(4, 100), (20, 1), (1, 12_345)]:
        result = measure({"instructions": ["h 0"], "shots": shots}, size, random.Random(size))
        counts = result["counts"]
        assert sum(counts.values()) == shots
        assert all(len(key) == size and set(key) <= {"0", "1"} for key in counts)
        json.dumps(result)


@pytest.mark.parametrize(
    "job_input",
    [None, [], {"shots": 10}, {"instructions": [], "shots": 0}, {"instructions": "h", "shots": 1}],
)
def test_the_mock_qpu_refuses_bad_input(job_input):
    with pytest.raises(QpuInputError):
        measure(job_input, 4)
