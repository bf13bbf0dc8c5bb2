"""Schemathesis, the larger run: tests/api/test_schemathesis.py with many more examples.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.fuzz [--examples 200]

Runs the same two fuzz tests as `make test` (open mode without a token, and a staff
token; every operation of /api/schema/) with `--examples` per operation and the same
checks: every Schemathesis check (`--checks all`), including that a schema-valid request
is accepted and a schema-violating one refused, with the exceptions the test module
states. Prints the outcome per operation and writes bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from bench.common import ROOT, print_table, write_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=200)
    options = parser.parse_args()
    report = Path(tempfile.mkdtemp(prefix="zypher-fuzz-")) / "junit.xml"
    env = {**os.environ, "ZYPHER_FUZZ_EXAMPLES": str(options.examples)}
    started = time.monotonic()
    code = subprocess.call(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/api/test_schemathesis.py",
            f"--junitxml={report}",
        ],
        cwd=ROOT,
        env=env,
    )
    seconds = time.monotonic() - started
    cases = list(ElementTree.parse(report).getroot().iter("testcase"))
    failed: dict[str, str] = {}
    for number, case in enumerate(cases):
        failure = case.find("failure")
        if failure is None:
            continue
        text = failure.text or ""
        operation = re.search(r"\[((?:GET|POST|PUT|PATCH|DELETE) [^\]]+)\]", text)
        codes = sorted(set(re.findall(r"ST\d+ [^\n]+", text)))
        name = f"{case.get('name', '')} {operation.group(1) if operation else f'#{number}'}"
        failed[name] = "; ".join(codes) or (failure.get("message") or "")[:160]
    print_table(
        f"Schemathesis, every check: {options.examples} examples per operation and identity, "
        f"{seconds:.0f} s",
        ["failed test", "why"],
        [[name, why] for name, why in sorted(failed.items())] or [["(none)", ""]],
    )
    print(f"{len(cases) - len(failed)} of {len(cases)} operation tests passed (pytest exit {code})")
    write_results(
        "fuzz",
        {
            "examples": options.examples,
            "checks": "all",
            "seconds": round(seconds, 1),
            "tests": len(cases),
            "failed": failed,
        },
    )
    return 1 if failed or code else 0


if __name__ == "__main__":
    sys.exit(main())
