"""A handler the client tests control: it runs until the test releases it.

`hold` waits until the file `input["release"]` exists (at most `input["cap"]` seconds,
default 30, so that a test that dies never leaves the device held), then returns its input.
With `input["progress"]` (a fraction) it first reports that progress, with the message
`input["message"]`, so a test sees a running job's progress without timing anything.
Tests use it to see a job queued and running for certain, without timing anything.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.handlers import report_progress


def hold(input: Any) -> dict[str, Any]:
    release = Path(input["release"])
    if "progress" in input:
        report_progress(float(input["progress"]), str(input.get("message", "")))
    deadline = time.monotonic() + float(input.get("cap", 30))
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"held": input.get("tag"), "released": release.exists()}
