"""The mock QPU: what a `qpu` job's device returns, after ZYPHER_QPU_SECONDS.

A `qpu` job's input is `{"instructions": [...], "shots": n}`; the result is
`{"counts": {"<bit string of the device's size>": n, ...}}` with counts summing to
`shots`. Used by remote agents of type `qpu` and by the dispatcher for simulated devices
(a registered address that is not an http(s) URL). While it "runs", it reports progress
in QPU_PROGRESS_STEPS steps (`jobs.progress.report_progress`).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from jobs.progress import report_progress

MAX_SHOTS = 1_000_000
MAX_DISTINCT_OUTCOMES = 16
QPU_PROGRESS_STEPS = 10


class QpuInputError(ValueError):
    pass


def check_qpu_input(job_input: Any) -> int:
    """The shots of a valid `qpu` input; QpuInputError names what is wrong."""
    if not isinstance(job_input, dict):
        raise QpuInputError("a qpu job's input must be an object with instructions and shots")
    if not isinstance(job_input.get("instructions"), list):
        raise QpuInputError("'instructions' must be a list")
    shots = job_input.get("shots")
    if isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= MAX_SHOTS:
        raise QpuInputError(f"'shots' must be an integer from 1 to {MAX_SHOTS}")
    return shots


def measure(job_input: Any, qubits: int, rng: random.Random | None = None) -> dict[str, Any]:
    """Counts over bit strings of `qubits` bits (at least 1) summing to the job's shots."""
    shots = check_qpu_input(job_input)
    rng = rng or random.Random()
    width = max(qubits, 1)
    outcomes = sorted(
        {format(rng.getrandbits(width), f"0{width}b") for _ in range(MAX_DISTINCT_OUTCOMES)}
    )
    counts: dict[str, int] = {}
    for outcome in rng.choices(outcomes, k=min(shots, 10_000)):
        counts[outcome] = counts.get(outcome, 0) + 1
    # Above 10,000 shots, scale the sample up and give the rounding rest to the first outcome.
    if shots > 10_000:
        counts = {key: value * shots // 10_000 for key, value in counts.items()}
        first = next(iter(counts))
        counts[first] += shots - sum(counts.values())
    return {"counts": counts}


def _step_message(step: int) -> str:
    return f"shot batch {step + 1} of {QPU_PROGRESS_STEPS}"


async def run_mock_qpu(job_input: Any, qubits: int, seconds: float) -> dict[str, Any]:
    """The device's run: `seconds` of waiting, reporting progress, then `measure`."""
    for step in range(QPU_PROGRESS_STEPS):
        report_progress(step / QPU_PROGRESS_STEPS, _step_message(step))
        await asyncio.sleep(seconds / QPU_PROGRESS_STEPS)
    report_progress(1.0, "measuring")
    return measure(job_input, qubits)


def qpu_handler(job_input: Any) -> dict[str, Any]:
    """The handler-registry form (a local worker process as a QPU): it does not know the
    device's size, so the bit strings have `job_input["qubits"]` bits (default 1)."""
    from django.conf import settings

    qubits = job_input.get("qubits", 1) if isinstance(job_input, dict) else 1
    if isinstance(qubits, bool) or not isinstance(qubits, int) or not 1 <= qubits <= 64:
        raise QpuInputError("'qubits' must be an integer from 1 to 64")
    check_qpu_input(job_input)
    for step in range(QPU_PROGRESS_STEPS):
        report_progress(step / QPU_PROGRESS_STEPS, _step_message(step))
        time.sleep(settings.ZYPHER_QPU_SECONDS / QPU_PROGRESS_STEPS)
    report_progress(1.0, "measuring")
    return measure(job_input, qubits)
