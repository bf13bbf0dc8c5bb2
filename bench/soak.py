"""Soak: 100 weighted users submit 10,000 jobs over HTTP while four devices run them.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.soak [--users 100] [--jobs 10000]

On PostgreSQL (DATABASE_URL; `make bench` provides a throwaway cluster): the real web
server (gunicorn, as `make run`) and one dispatcher with four local devices. Users get
weights 1..5 and ask for their weight's share of the jobs; client processes submit them
one request each while the devices run the test handler `sleep` (a few milliseconds,
logging each completed run). Then everything is reconciled (tests/support/reconcile.py): every
accepted job in exactly one final state, the succeeded count against the handler's own
log, no job twice, and the device time of each continuously backlogged user against its
weight share. Prints a table and writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (  # noqa: E402
    log,
    percentile,
    print_table,
    reset_tables,
    setup_django,
    subprocess_env,
    write_results,
)

setup_django()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from jobs.models import Job, User  # noqa: E402
from tests.support.loadgen import Clients, plan_weighted_jobs  # noqa: E402
from tests.support.processes import ServiceProcess, start_gateway, wait_until  # noqa: E402
from tests.support.reconcile import fairness, load_job_rows, read_executions, reconcile  # noqa: E402

TEST_HANDLERS = {"sleep": "tests.support.handlers:sleep"}


def drill_env(logs: Path, **extra: str) -> dict[str, str]:
    """The environment of the server and dispatchers of the soak and the fault drill."""
    settings = {
        "ZYPHER_HANDLERS": json.dumps(TEST_HANDLERS),
        "ZYPHER_TEST_EXEC_LOG": str(logs / "executions.log"),
    }
    return subprocess_env(**{**settings, **extra})


def start_dispatcher(env: dict[str, str], logs: Path, name: str, devices: int) -> ServiceProcess:
    command = [sys.executable, "manage.py", "run_dispatcher", "--devices", str(devices)]
    process = ServiceProcess(name, [*command, "--name", name], env, logs)
    wait_until(
        lambda: "running" in process.log_text() or process.process.poll() is not None,
        30,
        f"{name} to start",
    )
    if process.process.poll() is not None:
        raise SystemExit(f"{name} did not start:\n{process.log_text()}")
    return process


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--job-ms", type=float, default=100.0, help="handler time per job")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        print("soak needs PostgreSQL: run it through `make bench`", file=sys.stderr)
        return 2
    call_command("migrate", verbosity=0)
    reset_tables()
    weights = {f"soak{n:03d}": 1 + (n * 7) % 5 for n in range(options.users)}
    User.objects.bulk_create(User(username=user, weight=w) for user, w in weights.items())
    jobs = plan_weighted_jobs(weights, options.jobs, options.job_ms / 1000)
    logs = Path(tempfile.mkdtemp(prefix="zypher-soak-"))
    env = drill_env(logs)
    connection.close()
    gateway, url = start_gateway(env, logs)
    dispatcher = start_dispatcher(env, logs, "soak", options.devices)
    try:
        log(
            f"soak: {len(jobs):,} jobs of {options.job_ms:g} ms for {options.users} users "
            f"from {options.clients} client processes; {options.devices} devices"
        )
        started = time.monotonic()
        report = Clients(url, jobs, processes=options.clients, timeout=900).join()
        submitted_in = report.finished - report.started
        log(f"soak: submitted in {submitted_in:.1f}s; waiting for the backlog to drain")
        wait_until(
            lambda: not Job.objects.filter(status__in=["queued", "running"]).exists(),
            1800,
            "the backlog to drain",
            interval=0.5,
        )
        drained_in = time.monotonic() - started
    finally:
        dispatcher.stop()
        gateway.stop()
    rows = load_job_rows()
    result = reconcile(report.accepted, rows, read_executions(logs / "executions.log"))
    shares = fairness(rows)
    problems = result.problems(strict=True)
    latencies_ms = [s * 1000 for s in report.latencies]
    figures = {
        "users": options.users,
        "jobs": len(jobs),
        "job_ms": options.job_ms,
        "devices": options.devices,
        "clients": options.clients,
        "submitted_in_s": round(submitted_in, 2),
        "accepted_per_s": round(len(report.accepted) / submitted_in, 1),
        "submit_p50_ms": round(percentile(latencies_ms, 0.5), 2),
        "submit_p99_ms": round(percentile(latencies_ms, 0.99), 2),
        "http_statuses": report.statuses,
        "drained_in_s": round(drained_in, 2),
        "jobs_run_per_s": round(len(rows) / drained_in, 1),
        "reconcile": result.summary(),
        "fairness": shares.summary(),
        "problems": problems,
    }
    worst = shares.worst
    print_table(
        "Soak (PostgreSQL, gunicorn + one dispatcher; every figure from this run)",
        ["measure", "value"],
        [
            ["jobs accepted / planned", f"{len(report.accepted):,} / {len(jobs):,}"],
            ["HTTP answers", json.dumps(report.statuses)],
            ["accepted rate (jobs/s)", figures["accepted_per_s"]],
            [
                "submit latency p50 / p99 (ms)",
                f"{figures['submit_p50_ms']} / {figures['submit_p99_ms']}",
            ],
            ["final states", json.dumps(result.by_status)],
            ["handler executions (log)", f"{result.executions:,}"],
            [
                "missing / not final / twice",
                f"{len(result.missing)} / {len(result.not_final)} / {len(result.executed_again)}",
            ],
            ["drained in (s), jobs run per s", f"{drained_in:.1f}, {figures['jobs_run_per_s']}"],
            ["fairness window (s), users", f"{shares.window_seconds:.1f}, {len(shares.users)}"],
            [
                "worst share error (relative)",
                f"{worst.relative_error:.2%} ({worst.user}, weight {worst.weight})"
                if worst
                else "-",
            ],
            ["max |W_i/w_i - W_j/w_j| (s)", f"{shares.max_normalised_gap:.3f}"],
            ["reconciles", "yes" if not problems else "; ".join(problems)],
        ],
    )
    path = write_results("soak", figures)
    print(f"results: {path}")
    return 1 if problems or report.protocol_errors else 0


if __name__ == "__main__":
    sys.exit(main())
