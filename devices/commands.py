"""Operator commands to a device: the one client behind the console, the API and the admin.

`send_command` signs a command with the device's secret, posts it to the agent's
`/commands` endpoint and returns its answer. A simulated device (no agent) answers
`status` and `ping` itself and refuses the rest. An agent's answer is believed only when
signed with the device's secret (`protocol.verify_answer`); any other answer is reported
as the device not answering (DeviceUnreachable 502), logged (issue 17).
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from devices import protocol
from devices.models import Device

COMMAND_PATH = "/commands"

log = logging.getLogger("zypher.devices")


class DeviceUnreachable(Exception):
    """The device did not answer: `status` is 502 (refused, reset) or 504 (timed out)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CommandAnswer:
    status: int  # the agent's HTTP status: 200, 409 refused by state, 400 malformed, ...
    body: dict[str, Any]


def send_command(
    device: Device, command: str, args: dict[str, Any] | None = None, timeout: float = 5.0
) -> CommandAnswer:
    """Send one signed command to `device` and return its answer (DeviceUnreachable if none)."""
    message = {"command": command, "args": args or {}}
    if device.kind != Device.Kind.REMOTE:
        return _answer_without_agent(device, command)
    body = protocol.encode(message)
    headers = protocol.sign(device.secret, "POST", COMMAND_PATH, body)
    request = urllib.request.Request(
        device.url.rstrip("/") + COMMAND_PATH, data=body, method="POST", headers=headers
    )
    limit = protocol.MAX_ANSWER_BYTES + 1  # one more: verify_answer refuses it by size
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, raw, answer_headers = response.status, response.read(limit), response.headers
    except urllib.error.HTTPError as error:
        status, raw, answer_headers = error.code, error.read(limit), error.headers
    except TimeoutError:
        raise DeviceUnreachable(
            504, f"device {device.name} did not answer within {timeout:.0f}s"
        ) from None
    except (urllib.error.URLError, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError | socket.timeout):
            raise DeviceUnreachable(
                504, f"device {device.name} did not answer within {timeout:.0f}s"
            ) from None
        raise DeviceUnreachable(
            502, f"device {device.name} at {device.url} is unreachable: {reason}"
        ) from None
    try:
        answer = protocol.verify_answer(
            device.secret,
            headers[protocol.NONCE_HEADER],
            status,
            raw,
            answer_headers,
            max_age=settings.ZYPHER_SIGNATURE_MAX_AGE_SECONDS,
        )
    except protocol.ProtocolError as error:
        log.warning(
            "device %s: %s (%s %s); treated as no answer",
            device.name,
            error.message,
            command,
            status,
        )
        raise DeviceUnreachable(
            502, f"device {device.name} did not answer with its secret's signature: {error.message}"
        ) from None
    return CommandAnswer(status, answer)


def _answer_without_agent(device: Device, command: str) -> CommandAnswer:
    state = device.state
    if command == "status":
        return CommandAnswer(200, {"ok": True, "state": state, "result": {"kind": device.kind}})
    if command == "ping" and device.kind == Device.Kind.SIMULATED and state != "offline":
        return CommandAnswer(200, {"ok": True, "state": state, "result": int(time.time())})
    return CommandAnswer(
        409,
        {
            "ok": False,
            "state": state,
            "error": f"{device.kind} device {device.name} has no agent to take {command!r}",
        },
    )
