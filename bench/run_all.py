"""`make bench`: every benchmark in turn, each printing its table and writing JSON to
bench/results/. Runs inside tests/pgcluster.py, so all share one throwaway PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = ["bench_core.py", "bench_predict.py", "bench_dashboard.py", "bench_splines.py"]


def main() -> int:
    failures = []
    for script in SCRIPTS:
        path = BENCH / script
        if not path.exists():
            continue
        print(f"\n=== {script} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(path)], cwd=BENCH.parent)
        print(f"=== {script}: exit {code} after {time.monotonic() - started:.0f}s ===", flush=True)
        if code:
            failures.append(script)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
