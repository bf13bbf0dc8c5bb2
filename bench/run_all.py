"""`make bench` and `make reliability`: benchmarks in turn, each printing its table and
writing JSON to bench/results/. Runs inside tests/support/pgcluster.py, so all share one
throwaway PostgreSQL.

    python -m bench.run_all [performance|reliability]

`performance` (the default, `make bench`, under 15 minutes here, plus up to a quarter of an
hour for bench_prune's million jobs on a loaded machine): the core figures, the HTTP path
against its floors, the peers (pgqueuer, procrastinate), scale-out over several dispatchers
of one pool, /predict, the dashboard, splines and pruning a million ended jobs while a
dispatcher serves.
`reliability` (`make reliability`): the soak, the fault drill, the long fuzz run of
docs/reliability.md and the long queue torture (ZYPHER_TORTURE_SECONDS, default 300).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
GROUPS = {
    "performance": [
        "bench_core",
        "bench_http",
        "bench_peers",
        "bench_scale_out",
        "bench_predict",
        "bench_dashboard",
        "bench_splines",
        "bench_prune",
    ],
    "reliability": ["soak", "faults", "fuzz", "torture"],
}


def main(argv: list[str]) -> int:
    group = argv[0] if argv else "performance"
    if group not in GROUPS:
        print(f"usage: python -m bench.run_all [{'|'.join(GROUPS)}]", file=sys.stderr)
        return 2
    failures = []
    for script in GROUPS[group]:
        print(f"\n=== {script} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{script}"], cwd=BENCH.parent)
        print(f"=== {script}: exit {code} after {time.monotonic() - started:.0f}s ===", flush=True)
        if code:
            failures.append(script)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
