"""Operator commands to a device: the one client behind the console, the API and the admin.

`send_command` signs a command with the device's secret, posts it to the agent's
`/commands` endpoint and returns its answer. A simulated device (no agent) answers
`status` and `ping` itself and refuses the rest.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from devices import protocol
from devices.models import Device

COMMAND_PATH = "/commands"


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
    request = urllib.request.Request(
        device.url.rstrip("/") + COMMAND_PATH,
        data=body,
        method="POST",
        headers=protocol.sign(device.secret, "POST", COMMAND_PATH, body),
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return CommandAnswer(response.status, _json_or_error(response.read()))
    except urllib.error.HTTPError as error:
        return CommandAnswer(error.code, _json_or_error(error.read()))
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


def _json_or_error(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {"ok": False, "error": f"the device answered with non-JSON: {raw[:200]!r}"}
    return body if isinstance(body, dict) else {"ok": False, "error": "non-object answer"}


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
