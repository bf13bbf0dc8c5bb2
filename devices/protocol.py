"""The wire protocol between the gateway and its device agents.

Every command (gateway → agent) and every report (agent → gateway) is a JSON object,
signed with the device's secret:

    X-Zypher-Timestamp: <unix seconds>
    X-Zypher-Nonce:     <random hex, 16..64 characters>
    X-Zypher-Signature: hex(HMAC-SHA256(secret, "<METHOD> <path>\\n<timestamp>\\n<nonce>\\n" + body))

An agent's answer to a command is signed too, with the same headers over
"ANSWER <status> <the command's nonce>" and the answer's body: bound to the one command it
answers, it cannot be replayed, and anything else answering at the device's URL is not
believed (`verify_answer`; the gateway treats such an answer as no answer, issue 17).

The receiver refuses a message whose signature does not match (forged, or signed with
an old secret), whose timestamp is outside `max_age` seconds of its clock (stale), or
whose nonce it has seen within that window (replayed); then a body over the size limit,
a body that is not a JSON object, and an object that does not match the command's or
report's schema. Messages are only ever parsed with `json.loads`: nothing from the
network is unpickled or evaluated.

Plain Python, no Django: the agent and the gateway share it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema  # type: ignore[import-untyped]  # no stubs installed

TIMESTAMP_HEADER = "X-Zypher-Timestamp"
NONCE_HEADER = "X-Zypher-Nonce"
SIGNATURE_HEADER = "X-Zypher-Signature"

MAX_COMMAND_BYTES = 256 * 1024  # a `run` carries the job's input
MAX_REPORT_BYTES = 1024 * 1024  # a `job_finished` carries the job's result
# A job's result, JSON-encoded: the rest of a report's limit is headroom for its fields.
MAX_RESULT_BYTES = 512 * 1024
MAX_ANSWER_BYTES = 1024 * 1024  # a `status` answer lists the unreported jobs
DEFAULT_MAX_AGE_SECONDS = 30.0

STATES = ("unready", "ready", "busy", "offline")
CONTROL_COMMANDS = ("start", "stop", "terminate", "status")
DATA_COMMANDS = ("ping", "calculate", "run")
COMMANDS = CONTROL_COMMANDS + DATA_COMMANDS
ANSWER_METHOD = "ANSWER"  # in an answer's signed prefix: never a command's or report's

_NO_ARGS: dict[str, Any] = {"type": "object", "additionalProperties": False, "maxProperties": 0}
_UUID = {
    "type": "string",
    "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
}

COMMAND_ARG_SCHEMAS: dict[str, dict[str, Any]] = {
    "start": _NO_ARGS,
    "stop": _NO_ARGS,
    "terminate": _NO_ARGS,
    "status": _NO_ARGS,
    "ping": _NO_ARGS,
    "calculate": {
        "type": "object",
        "properties": {
            "x": {"type": "number", "minimum": 0, "maximum": 3600},
            "msg": {"type": "string", "maxLength": 1000},
        },
        "required": ["x", "msg"],
        "additionalProperties": False,
    },
    "run": {
        "type": "object",
        "properties": {
            "job_id": _UUID,
            "fencing_token": {"type": "integer", "minimum": 1},
            "kind": {"type": "string", "minLength": 1, "maxLength": 64},
            "input": {},
            "size": {"type": "integer", "minimum": 0},
        },
        "required": ["job_id", "fencing_token", "kind", "input"],
        "additionalProperties": False,
    },
}

COMMAND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "command": {"type": "string", "enum": list(COMMANDS)},
        "args": {"type": "object"},
    },
    "required": ["command"],
    "additionalProperties": False,
}

REPORT_SCHEMAS: dict[str, dict[str, Any]] = {
    "job_finished": {
        "type": "object",
        "properties": {
            "report": {"const": "job_finished"},
            "job_id": _UUID,
            "fencing_token": {"type": "integer", "minimum": 1},
            "succeeded": {"type": "boolean"},
            "result": {},
            "error": {"type": "string", "maxLength": 10000},
            "duration": {"type": "number", "minimum": 0},
            "state": {"enum": ["ready", "unready"]},
        },
        "required": ["report", "job_id", "fencing_token", "succeeded", "duration"],
        "additionalProperties": False,
    },
    "job_returned": {
        "type": "object",
        "properties": {
            "report": {"const": "job_returned"},
            "job_id": _UUID,
            "fencing_token": {"type": "integer", "minimum": 1},
            "reason": {"type": "string", "maxLength": 1000},
        },
        "required": ["report", "job_id", "fencing_token", "reason"],
        "additionalProperties": False,
    },
    "state": {
        "type": "object",
        "properties": {
            "report": {"const": "state"},
            "state": {"enum": ["ready", "unready"]},
        },
        "required": ["report", "state"],
        "additionalProperties": False,
    },
}


class ProtocolError(Exception):
    """A message refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NonceStore(Protocol):
    def remember(self, nonce: str, timestamp: float) -> bool:
        """Record a nonce; False if it was seen before (a replay)."""
        ...


class MemoryNonceStore:
    """Nonces seen within the freshness window, in memory (one agent process)."""

    def __init__(self, max_age: float = DEFAULT_MAX_AGE_SECONDS) -> None:
        self.max_age = max_age
        self.seen: dict[str, float] = {}

    def remember(self, nonce: str, timestamp: float) -> bool:
        now = time.time()
        if len(self.seen) > 1000:
            # Older nonces cannot be replayed anyway: their timestamp is stale.
            self.seen = {n: t for n, t in self.seen.items() if t > now - 2 * self.max_age}
        if nonce in self.seen:
            return False
        self.seen[nonce] = timestamp
        return True


def new_secret() -> str:
    return secrets.token_hex(32)


def _digest(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    prefix = f"{method.upper()} {path}\n{timestamp}\n{nonce}\n".encode()
    return hmac.new(secret.encode(), prefix + body, hashlib.sha256).hexdigest()


def sign(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign `body` for `method path` (now, with a fresh nonce by default)."""
    timestamp_text = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {
        TIMESTAMP_HEADER: timestamp_text,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: _digest(secret, method, path, timestamp_text, nonce, body),
        "Content-Type": "application/json",
    }


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def verify(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    nonces: NonceStore,
    *,
    max_age: float = DEFAULT_MAX_AGE_SECONDS,
    max_bytes: int = MAX_COMMAND_BYTES,
) -> dict[str, Any]:
    """Check a message's size and signature, freshness and nonce; return its JSON object."""
    if len(body) > max_bytes:
        raise ProtocolError(413, f"message of {len(body)} bytes is over the limit of {max_bytes}")
    timestamp, nonce = _check_signature(secret, method, path, body, headers, max_age)
    if not nonces.remember(nonce, int(timestamp)):
        raise ProtocolError(401, "replayed message: nonce already used")
    return parse_object(body)


def _answer_target(status: int, command_nonce: str) -> str:
    return f"{status} {command_nonce}"


def sign_answer(secret: str, command_nonce: str, status: int, body: bytes) -> dict[str, str]:
    """The headers that sign an agent's answer (`status`, `body`) to the command that
    carried `command_nonce`."""
    return sign(secret, ANSWER_METHOD, _answer_target(status, command_nonce), body)


def verify_answer(
    secret: str,
    command_nonce: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    max_age: float = DEFAULT_MAX_AGE_SECONDS,
) -> dict[str, Any]:
    """Check an agent's answer to the command that carried `command_nonce`; its JSON
    object. ProtocolError (502) for an unsigned, badly signed, stale or malformed answer:
    whoever sent it does not hold the device's secret, or answers another command."""
    if len(body) > MAX_ANSWER_BYTES:
        raise ProtocolError(502, f"answer over the limit of {MAX_ANSWER_BYTES} bytes")
    try:
        _check_signature(
            secret, ANSWER_METHOD, _answer_target(status, command_nonce), body, headers, max_age
        )
        return parse_object(body)
    except ProtocolError as error:
        raise ProtocolError(502, f"answer refused: {error.message}") from None


def _check_signature(
    secret: str, method: str, path: str, body: bytes, headers: Mapping[str, str], max_age: float
) -> tuple[str, str]:
    """The signature headers' (timestamp, nonce) once signature and freshness pass."""
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    nonce = headers.get(NONCE_HEADER, "")
    signature = headers.get(SIGNATURE_HEADER, "")
    if not (timestamp and nonce and signature):
        raise ProtocolError(
            401, f"unsigned message: send {TIMESTAMP_HEADER}, {NONCE_HEADER}, {SIGNATURE_HEADER}"
        )
    if not timestamp.isdigit() or not 16 <= len(nonce) <= 64 or not nonce.isalnum():
        raise ProtocolError(401, "malformed signature headers")
    expected = _digest(secret, method, path, timestamp, nonce, body)
    if not hmac.compare_digest(expected, signature):
        raise ProtocolError(401, "bad signature")
    age = time.time() - int(timestamp)
    if abs(age) > max_age:
        raise ProtocolError(
            401, f"stale message: timestamp is {age:.0f}s off (window {max_age:.0f}s)"
        )
    return timestamp, nonce


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(400, "body is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(400, "body must be a JSON object")
    return message


def _schema_error(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(part) for part in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Any]


def parse_command(message: Mapping[str, Any]) -> Command:
    """Validate a command object against the schemas (400 with the reason if it fails)."""
    if message.get("command") not in COMMANDS and isinstance(message.get("command"), str):
        raise ProtocolError(
            400, f"unknown command {message['command']!r}; known: {', '.join(COMMANDS)}"
        )
    try:
        jsonschema.validate(message, COMMAND_SCHEMA)
        args = message.get("args", {})
        jsonschema.validate(args, COMMAND_ARG_SCHEMAS[message["command"]])
    except jsonschema.ValidationError as error:
        raise ProtocolError(400, f"malformed command: {_schema_error(error)}") from None
    return Command(message["command"], dict(args))


def parse_report(message: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a report object (400 with the reason if it fails)."""
    kind = message.get("report")
    if not isinstance(kind, str) or kind not in REPORT_SCHEMAS:
        raise ProtocolError(
            400, f"malformed report: 'report' must be one of {', '.join(REPORT_SCHEMAS)}"
        )
    try:
        jsonschema.validate(message, REPORT_SCHEMAS[kind])
    except jsonschema.ValidationError as error:
        raise ProtocolError(400, f"malformed report: {_schema_error(error)}") from None
    return dict(message)
