"""bench_core's breakdown of a device's idle gap pairs each settle with the job it
started, even when the woken worker ran that job before the dispatcher took its
order-sent stamp (the usual case on a busy machine: the worker preempts it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_core import GAP_SEGMENTS, gap_breakdown


def test_the_parts_of_a_gap_add_up_to_it_when_the_job_starts_before_the_sent_stamp(
    tmp_path: Path,
) -> None:
    stamps, trace = tmp_path / "stamps.log", tmp_path / "trace.log"
    # Jobs: the one that ended, the one the settle started, and a later one.
    stamps.write_text("1 10.0000 10.0010\n1 10.0035 10.0036\n1 10.0080 10.0081\n")
    # Readable, task running, call issued, call answered, back on the loop, order sent:
    # the order-sent stamp (10.0040) comes after the next job's start (10.0035).
    trace.write_text("10.0012 10.0013 10.0014 10.0030 10.0031 10.0040\n")
    parts = gap_breakdown(stamps, trace, 0.0, 20.0)
    assert sum(part["median_ms"] for part in parts.values()) == pytest.approx(2.5)
    assert parts[GAP_SEGMENTS[-1]]["median_ms"] == pytest.approx(0.4)
    assert parts[GAP_SEGMENTS[3]]["median_ms"] == pytest.approx(1.6)  # the call
