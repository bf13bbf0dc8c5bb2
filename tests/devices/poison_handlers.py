"""Handlers whose results no JSON column can hold: run by device agents in the poison tests
(registered for them through ZYPHER_HANDLERS)."""

from __future__ import annotations

from typing import Any

from devices import protocol

POISON_HANDLERS = {
    "nan_result": "tests.devices.poison_handlers:nan_result",
    "nul_result": "tests.devices.poison_handlers:nul_result",
    "huge_result": "tests.devices.poison_handlers:huge_result",
}


def nan_result(input: Any) -> dict[str, Any]:
    return {"mean": float("nan"), "max": float("inf")}


def nul_result(input: Any) -> dict[str, Any]:
    return {"text": "before\x00after"}


def huge_result(input: Any) -> dict[str, Any]:
    # Over the report limit itself: the gateway could not even read the report.
    return {"blob": "x" * (protocol.MAX_REPORT_BYTES + 1)}
