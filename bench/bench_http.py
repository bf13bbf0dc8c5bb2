"""The HTTP path against its floors: what Django, DRF and the server add to a request.

    python tests/support/pgcluster.py -- .venv/bin/python -m bench.bench_http [--quick]
    python tests/support/pgcluster.py -- .venv/bin/python -m bench.bench_http --profile

Needs PostgreSQL (DATABASE_URL). Each figure stands next to a floor measured in the same
run, on the same server configuration (gunicorn.conf.py):

- `GET /api/health/` against a bare ASGI hello app (bench/hello_asgi.py);
- `POST /api/jobs/` (one job, one sequential client) against `submit_jobs` called in
  process; `GET /api/jobs/<id>/` against reading and serialising the job in process;
- concurrent single submits (4 client processes) against the trivial view's throughput,
  from `requests` and again from http.client (lean clients leave the server more of the
  shared cores).

The sequential figures are taken with `requests` (as a Python application would send
them) and again with the standard library's http.client, whose own CPU is a tenth of
requests' (its rows say so): the second shows what the server path costs.

`--spy` records the served gunicorn workers with py-spy (a bench-only dependency) while one
client submits, or 4 clients with `--clients 4`, and prints where a request's CPU goes in
the worker, by stage (`SPY_STAGES`); the raw stacks go to bench/results/http_spy.txt.

`--profile` runs requests through the ASGI application in this process instead: the
thread hops per request (asgiref's sync_to_async / async_to_sync calls) and a cProfile
breakdown of the same requests through the synchronous handler. Writes
bench/results/http.json.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The in-process requests of --profile submit as a named user, as the servers here do.
os.environ.setdefault("ZYPHER_OPEN_MODE", "1")

import requests  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from bench.bench_core import http_load, lean_send, reset_tables  # noqa: E402  (sets Django up)
from bench.common import RESULTS, log, print_table, subprocess_env, write_results  # noqa: E402
from jobs.api.serializers import JobDetailSerializer  # noqa: E402
from jobs.models import Job, User  # noqa: E402
from jobs.queue import JobSpec, submit_jobs  # noqa: E402
from tests.support.asgi import asgi_request as support_asgi_request  # noqa: E402
from tests.support.processes import ServiceProcess, free_port, start_gateway, wait_until  # noqa: E402

TARGETS = {
    "health": 1.5,  # x the bare ASGI app, at most
    "submit": 3.0,  # x the in-process call, at most
    "detail": 3.0,
    "concurrent": 0.6,  # of the trivial view's throughput, at least
}


# --- in process -----------------------------------------------------------------------


def time_calls(call: Callable[[], object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def in_process_submit(owner: User) -> Callable[[], object]:
    spec = JobSpec(kind="noop", input=1, device_type="cpu")
    return lambda: submit_jobs(owner, [spec])


def in_process_detail(public_id: str) -> Callable[[], object]:
    def read() -> object:
        job = Job.objects.select_related("owner").get(public_id=public_id)
        return json.dumps(JobDetailSerializer(job, context={"request": None}).data)

    return read


# --- over HTTP --------------------------------------------------------------------------


def start_hello() -> tuple[ServiceProcess, str]:
    """The bare ASGI app under the same gunicorn.conf.py as Zypher."""
    port = free_port()
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    process = ServiceProcess(
        "gunicorn-hello",
        [gunicorn, "bench.hello_asgi:app", "-b", f"127.0.0.1:{port}"],
        subprocess_env(),
        RESULTS,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(url + "/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(answers, 30, "the hello app to answer")
    return process, url


def time_requests(
    session: requests.Session, count: int, send: Callable[[int], requests.Response]
) -> list[float]:
    times = []
    for index in range(count):
        started = time.perf_counter()
        response = send(index)
        times.append(time.perf_counter() - started)
        if response.status_code not in (200, 201):
            raise RuntimeError(
                f"{response.request.url}: {response.status_code} {response.text[:200]}"
            )
    return times


def time_lean(base: str, count: int, path: str, body: Callable[[int], bytes] | None) -> list[float]:
    """`count` requests from the standard library's http.client on one kept-alive
    connection: a client of a tenth of `requests`' CPU (~0.2 against ~2 ms a submit), so
    that the figure is the server's and the network's."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    times = []
    try:
        for index in range(count):
            data = None if body is None else body(index)
            started = time.perf_counter()
            lean_send(conn, path, data)
            times.append(time.perf_counter() - started)
    finally:
        conn.close()
    return times


def submit_body(index: int) -> bytes:
    return json.dumps({"user_id": "bench-http", "kind": "noop", "input": index}).encode()


def sequential(zypher: str, hello: str, rounds: int, count: int) -> dict[str, list[float]]:
    """Interleaved rounds of every figure, so load on the shared machine hits them alike."""
    session = requests.Session()
    owner, _ = User.objects.get_or_create(username="bench-inproc")
    submitted = session.post(
        zypher + "/api/jobs/",
        json={"user_id": "bench-http", "kind": "noop", "input": 0},
        timeout=30,
    )
    job_url = zypher + f"/api/jobs/{submitted.json()['id']}/"
    samples: dict[str, list[float]] = {
        name: []
        for name in (
            "hello",
            "health",
            "submit",
            "detail",
            "submit_inproc",
            "detail_inproc",
            "hello_lean",
            "health_lean",
            "submit_lean",
        )
    }
    for round_number in range(rounds):
        log(f"sequential: round {round_number + 1} of {rounds}, {count} of each")
        samples["hello"] += time_requests(
            session, count, lambda _: session.get(hello + "/", timeout=30)
        )
        samples["health"] += time_requests(
            session, count, lambda _: session.get(zypher + "/api/health/", timeout=30)
        )
        samples["submit"] += time_requests(
            session,
            count,
            lambda i: session.post(
                zypher + "/api/jobs/",
                json={"user_id": "bench-http", "kind": "noop", "input": i},
                timeout=30,
            ),
        )
        samples["detail"] += time_requests(
            session, count, lambda _: session.get(job_url, timeout=30)
        )
        samples["hello_lean"] += time_lean(hello, count, "/", None)
        samples["health_lean"] += time_lean(zypher, count, "/api/health/", None)
        samples["submit_lean"] += time_lean(zypher, count, "/api/jobs/", submit_body)
        samples["submit_inproc"] += time_calls(in_process_submit(owner), count)
        samples["detail_inproc"] += time_calls(in_process_detail(submitted.json()["id"]), count)
    return samples


# --- profile: hops and where the time goes ---------------------------------------------


def asgi_request(app: Any, method: str, path: str, body: bytes = b"") -> int:
    """One request through the ASGI application in this process; returns the status."""
    headers = ((b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)))
    return support_asgi_request(app, path, method, headers, body)[0]


def count_hops(app: Any, method: str, path: str, body: bytes = b"") -> Counter[str]:
    """asgiref adapter calls during one request: each is a hop between loop and thread."""
    from asgiref import sync

    hops: Counter[str] = Counter()
    original_s2a, original_a2s = sync.SyncToAsync.__call__, sync.AsyncToSync.__call__

    async def s2a(self: Any, *args: Any, **kwargs: Any) -> Any:
        hops[f"sync_to_async {getattr(self.func, '__qualname__', self.func)}"] += 1
        return await original_s2a(self, *args, **kwargs)

    def a2s(self: Any, *args: Any, **kwargs: Any) -> Any:
        hops[f"async_to_sync {getattr(self.awaitable, '__qualname__', self.awaitable)}"] += 1
        return original_a2s(self, *args, **kwargs)

    sync.SyncToAsync.__call__ = s2a  # type: ignore[method-assign]
    sync.AsyncToSync.__call__ = a2s  # type: ignore[method-assign]
    try:
        asgi_request(app, method, path, body)
    finally:
        sync.SyncToAsync.__call__ = original_s2a  # type: ignore[method-assign]
        sync.AsyncToSync.__call__ = original_a2s  # type: ignore[method-assign]
    return hops


def profile(count: int) -> dict[str, Any]:
    from django.test import Client

    from zypher.asgi import application as app

    body = json.dumps({"user_id": "bench-profile", "kind": "noop", "input": 1}).encode()
    status = asgi_request(app, "POST", "/api/jobs/", body)  # create the user, warm caches
    job_id = Job.objects.order_by("-id").values_list("public_id", flat=True).first()
    assert job_id is not None, f"the warm-up submit queued nothing ({status})"
    cases = {
        "health": ("GET", "/api/health/", b""),
        "submit": ("POST", "/api/jobs/", body),
        "detail": ("GET", f"/api/jobs/{job_id}/", b""),
    }
    report: dict[str, Any] = {}
    for name, (method, path, data) in cases.items():
        hops = count_hops(app, method, path, data)

        def through_asgi(m: str = method, p: str = path, d: bytes = data) -> int:
            return asgi_request(app, m, p, d)

        asgi_times = time_calls(through_asgi, count)
        print(f"\n{name}: {method} {path}: {sum(hops.values())} hops per request (ASGI)")
        for hop, times in hops.most_common():
            print(f"  {times} x {hop}")
        # cProfile follows one thread: the same request through the synchronous handler.
        client = Client()

        def send(m: str = method, p: str = path, d: bytes = data, c: Client = client) -> object:
            if m == "POST":
                return c.post(p, d, content_type="application/json")
            return c.get(p)

        send()
        profiler = cProfile.Profile()
        profiler.enable()
        sync_times = time_calls(send, count)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(35)
        print(f"  ASGI in process: median {statistics.median(asgi_times) * 1000:.3f} ms;")
        print(
            f"  synchronous handler under cProfile: median {statistics.median(sync_times) * 1000:.3f} ms"
        )
        print("\n".join(out.getvalue().splitlines()[:60]))
        report[name] = {
            "hops": dict(hops),
            "asgi_in_process_median_ms": statistics.median(asgi_times) * 1000,
        }
    return report


# --- spy: the served worker, sampled ----------------------------------------------------

# Stages of a request in the worker, each matched by a frame's text (function and file);
# a sample counts for every stage on its stack, so the nested ones are parts of the outer.
SPY_STAGES: list[tuple[str, str]] = [
    ("request thread (Django's chain)", "respond (jobs/api/middleware.py"),
    ("  middleware outside the view", "_get_response (django/core/handlers/base.py"),
    ("    DRF dispatch", "dispatch (rest_framework/views.py"),
    ("      initial (auth, perms, throttles, negotiation)", "initial (rest_framework/views.py"),
    ("        content negotiation", "perform_content_negotiation (rest_framework/views.py"),
    ("        authentication", "perform_authentication (rest_framework/views.py"),
    ("        throttles", "check_throttles (rest_framework/views.py"),
    ("      request.data (parse)", "data (rest_framework/request.py"),
    ("      submit view (post)", "post (jobs/api/views.py"),
    ("        serializer is_valid", "is_valid (rest_framework/serializers.py"),
    ("          fields built (get_fields, deepcopy)", "fields (rest_framework/serializers.py"),
    ("        submit_with_callbacks", "submit_with_callbacks (jobs/programs.py"),
    ("          submit_jobs", "submit_jobs (jobs/queue.py"),
    ("            database call (execute)", "execute (django/db/backends/utils.py"),
    ("            pool checkout", "getconn (psycopg_pool/pool.py"),
    ("        response serializer", "data (rest_framework/serializers.py"),
    ("      finalize_response (render)", "finalize_response (rest_framework/views.py"),
    ("    response render", "render (django/template/response.py"),
    ("  request_finished (close, pool return)", "close (django/http/response.py"),
    ("uvicorn's HTTP protocol (parse, send)", "uvicorn/protocols/http"),
    ("Django's ASGI handler on the loop", "handle (jobs/api/middleware.py"),
]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User plus system CPU of each of these processes so far (/proc); gone ones left out."""
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def cpu_since(before: dict[int, float], pids: list[int]) -> float:
    """CPU these processes used since `before`, counting those that lived throughout."""
    now = cpu_seconds(pids)
    return sum(now[pid] - before[pid] for pid in now.keys() & before.keys())


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def postgres_pids() -> list[int]:
    with connection.cursor() as cursor:  # every backend and PostgreSQL's own processes
        cursor.execute("SELECT pid FROM pg_stat_activity")
        pids = [row[0] for row in cursor.fetchall()]
    connection.close()  # the forked clients must not share this process's connection
    return pids


def spy(zypher: str, seconds: float, clients: int, master: int) -> dict[str, Any]:
    """Where a submit's time goes in the served workers, with `clients` submitting.

    CPU per request from /proc, of the web workers and of PostgreSQL's processes, then
    py-spy samples of the workers holding the GIL (Python running; waits on the socket
    or the database release it), attributed to the stages of `SPY_STAGES`.
    """
    py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("--spy needs py-spy: .venv/bin/pip install py-spy (requirements.txt)")
    http_load(zypher, "submit", 1.0, clients)  # the pools fill, the code warms
    workers, backends = worker_pids(master), postgres_pids()
    cpu: dict[str, dict[str, float]] = {}
    loads: dict[str, dict[str, float]] = {}
    for kind in ("health", "submit"):
        before = cpu_seconds(workers), cpu_seconds(backends), os.times()
        loads[kind] = load = http_load(zypher, kind, seconds, clients)
        after = os.times()
        served = load["requests_per_s"] * seconds
        cpu[kind] = {
            "clients": after.children_user
            + after.children_system
            - before[2].children_user
            - before[2].children_system,
            "web_workers": cpu_since(before[0], workers),
            "postgresql": cpu_since(before[1], backends),
        }
        cpu[kind] = {name: 1000 * value / served for name, value in cpu[kind].items()}
        print(
            f"\n{kind}, {clients} client(s), no profiler: {load['requests_per_s']:.0f} req/s, "
            f"median {load['median_ms']:.2f} ms; CPU per request: "
            + ", ".join(f"{name} {value:.2f} ms" for name, value in cpu[kind].items())
            + f" (of {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
        )
    raw = RESULTS / "http_spy.txt"
    rate = 1000
    recorder = subprocess.Popen(
        [py_spy, "record", "--pid", str(master), "--subprocesses", "--gil", "--nonblocking"]
        + ["--rate", str(rate), "--format", "raw"]
        + ["--duration", str(int(seconds) + 2), "-o", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # py-spy attaches to the master and finds its workers
    sampled = http_load(zypher, "submit", seconds, clients)
    _, errors = recorder.communicate(timeout=seconds + 60)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote nothing: {errors.decode()[-2000:]}")
    stacks: list[tuple[str, int]] = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        stacks.append((stack, int(count)))
    total = sum(n for _, n in stacks)
    # Samples over the whole recording; the requests over the load's part of it.
    per_request = 1000 / rate / (sampled["requests_per_s"] * (int(seconds) + 2))
    print(
        f"py-spy (GIL held, {rate}/s): {sampled['requests_per_s']:.0f} submits/s; "
        f"{total * per_request:.2f} ms of Python per submit (an upper bound: the recording "
        "starts a second before the clients and ends a second after)"
    )
    breakdown: dict[str, float] = {}
    for name, marker in SPY_STAGES:
        hits = sum(n for s, n in stacks if marker in s)
        breakdown[name.strip()] = hits * per_request
        print(f"  {name:<56} {hits * per_request:6.2f} ms  {100 * hits / max(total, 1):5.1f}%")
    return {
        "clients": clients,
        "loads": loads,
        "cpu_ms_per_request": cpu,
        "python_ms_per_request": total * per_request,
        "stages_ms_per_request": breakdown,
    }


# --- the report ---------------------------------------------------------------------------


def verdict(ratio: float, target: float, at_least: bool = False) -> str:
    met = ratio >= target if at_least else ratio <= target
    return "MET" if met else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke test)")
    parser.add_argument("--profile", action="store_true", help="hops and cProfile, in process")
    parser.add_argument("--spy", action="store_true", help="py-spy on the served workers")
    parser.add_argument("--clients", type=int, default=1, help="--spy: client processes")
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        print(
            "bench_http needs PostgreSQL: run it through tests/support/pgcluster.py",
            file=sys.stderr,
        )
        return 2
    call_command("migrate", verbosity=0)
    reset_tables()
    if options.profile:
        write_results("http_profile", profile(100 if options.quick else 300))
        return 0
    if options.spy:
        gateway, zypher = start_gateway(subprocess_env(), RESULTS)
        try:
            report = spy(zypher, 12.0, options.clients, gateway.process.pid)
        finally:
            gateway.stop()
        write_results("http_spy", report)
        return 0
    load = os.getloadavg()
    rounds, count = (2, 100) if options.quick else (3, 300)
    seconds = 3.0 if options.quick else 6.0
    gateway, zypher = start_gateway(subprocess_env(), RESULTS)
    hello, hello_url = start_hello()
    try:
        samples = sequential(zypher, hello_url, rounds, count)
        connection.close()  # the forked clients must not share this process's connection
        log(f"concurrent: 4 clients, {seconds:.0f}s each of health and single submits")
        health_load = http_load(zypher, "health", seconds, 4)
        submit_load = http_load(zypher, "submit", seconds, 4)
        # The same with lean clients: on this shared machine `requests`' own CPU (~2 ms a
        # request, as much for health as for a submit) dilutes the server's difference.
        log(f"concurrent (http.client): 4 clients, {seconds:.0f}s each of the same")
        health_lean_load = http_load(zypher, "health", seconds, 4, lean=True)
        submit_lean_load = http_load(zypher, "submit", seconds, 4, lean=True)
    finally:
        hello.stop()
        gateway.stop()
    median = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    ratios = {
        "health": median["health"] / median["hello"],
        "submit": median["submit"] / median["submit_inproc"],
        "detail": median["detail"] / median["detail_inproc"],
        "concurrent": submit_load["requests_per_s"] / health_load["requests_per_s"],
        "concurrent_lean": submit_lean_load["requests_per_s"] / health_lean_load["requests_per_s"],
        "health_lean": median["health_lean"] / median["hello_lean"],
        "submit_lean": median["submit_lean"] / median["submit_inproc"],
    }
    rows = [
        [
            "GET /api/health/",
            f"{median['health']:.3f} ms",
            "bare ASGI hello, same server",
            f"{median['hello']:.3f} ms",
            f"{ratios['health']:.2f}x",
            "<= 1.5x",
            verdict(ratios["health"], TARGETS["health"]),
        ],
        [
            "POST /api/jobs/ (1 job, sequential)",
            f"{median['submit']:.3f} ms",
            "submit_jobs in process",
            f"{median['submit_inproc']:.3f} ms",
            f"{ratios['submit']:.2f}x",
            "<= 3x",
            verdict(ratios["submit"], TARGETS["submit"]),
        ],
        [
            "GET /api/jobs/<id>/ (sequential)",
            f"{median['detail']:.3f} ms",
            "read + serialise in process",
            f"{median['detail_inproc']:.3f} ms",
            f"{ratios['detail']:.2f}x",
            "<= 3x",
            verdict(ratios["detail"], TARGETS["detail"]),
        ],
        [
            "GET /api/health/ (http.client)",
            f"{median['health_lean']:.3f} ms",
            "bare ASGI hello (http.client)",
            f"{median['hello_lean']:.3f} ms",
            f"{ratios['health_lean']:.2f}x",
            "<= 1.5x",
            verdict(ratios["health_lean"], TARGETS["health"]),
        ],
        [
            "POST /api/jobs/ (http.client)",
            f"{median['submit_lean']:.3f} ms",
            "submit_jobs in process",
            f"{median['submit_inproc']:.3f} ms",
            f"{ratios['submit_lean']:.2f}x",
            "<= 3x",
            verdict(ratios["submit_lean"], TARGETS["submit"]),
        ],
        [
            "POST /api/jobs/ (1 job, 4 clients)",
            f"{submit_load['requests_per_s']:.0f} req/s",
            "GET /api/health/, 4 clients",
            f"{health_load['requests_per_s']:.0f} req/s",
            f"{ratios['concurrent']:.2f}",
            ">= 0.6",
            verdict(ratios["concurrent"], TARGETS["concurrent"], at_least=True),
        ],
        [
            "POST /api/jobs/ (1 job, 4 http.client clients)",
            f"{submit_lean_load['requests_per_s']:.0f} req/s",
            "GET /api/health/, 4 http.client clients",
            f"{health_lean_load['requests_per_s']:.0f} req/s",
            f"{ratios['concurrent_lean']:.2f}",
            ">= 0.6",
            verdict(ratios["concurrent_lean"], TARGETS["concurrent"], at_least=True),
        ],
    ]
    print_table(
        f"HTTP path against its floors (medians; load average {load[0]:.1f} at the start)",
        ["figure", "measured", "floor", "floor measured", "ratio", "target", "verdict"],
        rows,
    )
    path = write_results(
        "http",
        {
            "load_average": load,
            "median_ms": median,
            "ratios": ratios,
            "concurrent": {"health": health_load, "submit": submit_load},
            "concurrent_lean": {"health": health_lean_load, "submit": submit_lean_load},
            "quick": options.quick,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
