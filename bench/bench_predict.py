"""How many synchronous /predict requests can wait at once, and what that costs.

    python -m bench.bench_predict [--waiting 1000] [--skip-gthread]

On PostgreSQL (DATABASE_URL; without it the script re-runs itself under
tests/support/pgcluster.py), in a database of its own that it drops afterwards, it starts the
web server as `make run` does (gunicorn, 2 uvicorn workers) and measures:

1. the sync overhead on an idle device: response time of a sync prediction minus the
   model's own run time (fixed at 100 ms), sequentially;
2. N sync predictions waiting at once (no dispatcher yet, so they all wait): the memory
   (RSS) and threads of the web processes, database connections, and the latency of
   fast endpoints meanwhile; then a dispatcher drains them and every answer is checked;
3. for comparison, the WSGI server it replaced (gunicorn gthread, 2 x 8 threads) with
   32 waiting sync predictions: does a fast endpoint still answer?

All traffic goes to 127.0.0.1; every loop is bounded in count and time. Prints a table
and writes bench/results/predict.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "predict.json"
BIN = Path(sys.executable).parent
MODEL_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a minimal HTTP/1.1 client: 1,000 idle connections cost nothing in one event loop ---


async def http(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, Any]:
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"Content-Length: {len(payload)}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, content = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(content) if content else None


async def timed(port: int, method: str, path: str, body: Any = None, timeout: float = 10) -> float:
    """Seconds for one request (the timeout if it did not answer)."""
    started = time.perf_counter()
    try:
        status, _ = await http(port, method, path, body, timeout=timeout)
    except TimeoutError:
        return timeout
    assert status < 300, (method, path, status)
    return time.perf_counter() - started


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "n": len(ordered),
    }


# --- processes -------------------------------------------------------------------------


class Service:
    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._out.close()


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(k) for k in children.read_text().split()] if children.exists() else []
    return [pid] + [p for kid in kids for p in process_tree(kid)]


def memory_of(pid: int) -> dict[str, float]:
    """RSS (MiB) and threads of a process and its children (gunicorn and its workers)."""
    rss_kib = threads = 0
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kib += int(line.split()[1])
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
    return {"rss_mib": round(rss_kib / 1024, 1), "threads": threads}


def start_web(kind: str, env: dict[str, str], logs: Path) -> tuple[Service, int]:
    port = free_port()
    command = [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "-w", "2"]
    if kind == "asgi":  # as `make run`
        command += ["zypher.asgi", "-k", "uvicorn_worker.UvicornWorker"]
    else:  # the server `make run` used before /predict
        command += ["zypher.wsgi", "-k", "gthread", "--threads", "8"]
    service = Service(f"web-{kind}", command, env, logs)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if asyncio.run(http(port, "GET", "/api/health/", timeout=1))[0] == 200:
                return service, port
        except OSError:
            time.sleep(0.1)
    service.stop()
    raise SystemExit(f"{kind} server did not start:\n{service.log.read_text()}")


def start_dispatcher(env: dict[str, str], logs: Path, devices: int, delay: float) -> Service:
    command = [sys.executable, "manage.py", "run_dispatcher", "--devices", str(devices)]
    env = {**env, "ZYPHER_PREDICT_DELAY": f"{delay},{delay}"}
    service = Service(f"dispatcher-{devices}x{delay}", command, env, logs)
    deadline = time.monotonic() + 30
    while "running" not in service.log.read_text():
        if time.monotonic() > deadline or service.process.poll() is not None:
            service.stop()
            raise SystemExit(f"dispatcher did not start:\n{service.log.read_text()}")
        time.sleep(0.1)
    return service


# --- the database ----------------------------------------------------------------------


class BenchDatabase:
    """A database of the bench's own on the server of DATABASE_URL, dropped at the end."""

    def __init__(self, server_url: str) -> None:
        import psycopg

        self.psycopg = psycopg
        parts = urlsplit(server_url)
        self.name = f"zypher_bench_predict_{uuid.uuid4().hex[:8]}"
        self.admin_url = server_url
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def drop(self) -> None:
        with self.psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


# --- the measurements --------------------------------------------------------------------


def idle_overhead(port: int, db: BenchDatabase, count: int = 30) -> dict[str, Any]:
    async def run() -> list[tuple[float, float, str]]:
        samples = []
        for index in range(count + 3):
            sent = time.time()
            status, body = await http(port, "POST", "/predict", {"input": f"idle {index}"})
            answered = time.time()
            assert status == 200 and body["input"] == f"idle {index}", (status, body)
            if index >= 3:  # the first ones warm up workers and connections
                samples.append((sent, answered, f"idle {index}"))
        return samples

    samples = asyncio.run(run())
    rows = {
        text: (created.timestamp(), started.timestamp(), finished.timestamp(), duration)
        for text, created, started, finished, duration in db.query(
            "SELECT input #>> '{}', created_at, started_at, finished_at, duration "
            "FROM jobs_job WHERE kind = 'predict'"
        )
    }
    total, to_start, to_answer = [], [], []
    for sent, answered, text in samples:
        created, started, finished, duration = rows[text]
        total.append(answered - sent - MODEL_SECONDS)
        to_start.append(started - sent)
        to_answer.append(answered - finished)
    return {
        "model_seconds": MODEL_SECONDS,
        "overhead": summary(total),
        "request_to_model_start": summary(to_start),
        "job_end_to_response": summary(to_answer),
    }


def many_waiting(
    port: int, web: Service, db: BenchDatabase, env: dict[str, str], logs: Path, waiting: int
) -> dict[str, Any]:
    result: dict[str, Any] = {"waiting": waiting, "idle_web": memory_of(web.process.pid)}

    async def run() -> None:
        inputs = [f"wait {index}" for index in range(waiting)]
        started = time.monotonic()
        clients = [
            asyncio.create_task(http(port, "POST", "/predict", {"input": text}, timeout=150))
            for text in inputs
        ]
        deadline = time.monotonic() + 90
        while True:
            (queued,) = db.query("SELECT count(*) FROM jobs_job WHERE kind = 'predict'")[0]
            if queued >= waiting or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        result["all_submitted_seconds"] = round(time.monotonic() - started, 2)
        await asyncio.sleep(1)
        assert not any(client.done() for client in clients), "a request ended while waiting"
        result["loaded_web"] = memory_of(web.process.pid)
        result["db_connections"] = db.query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        )[0][0]
        (some_id,) = db.query(
            "SELECT public_id::text FROM jobs_job WHERE status = 'queued' AND kind = 'predict' "
            "LIMIT 1"
        )[0]
        health, submit, read = [], [], []
        for index in range(100):
            health.append(await timed(port, "GET", "/api/health/"))
            submit.append(
                await timed(
                    port, "POST", "/api/jobs/", {"user_id": "f", "kind": "noop", "input": index}
                )
            )
            started_read = time.perf_counter()
            status, _ = await http(port, "GET", f"/predict/{some_id}", timeout=10)
            assert status == 400  # still being processed
            read.append(time.perf_counter() - started_read)
        result["meanwhile"] = {
            "GET /api/health/": summary(health),
            "POST /api/jobs/": summary(submit),
            "GET /predict/<id>": summary(read),
        }
        assert not any(client.done() for client in clients)

        dispatcher = start_dispatcher(env, logs, devices=4, delay=0.001)
        drain_started = time.monotonic()
        try:
            answers = await asyncio.gather(*clients)
        finally:
            dispatcher.stop()
        result["drain_seconds"] = round(time.monotonic() - drain_started, 2)
        correct = sum(
            1
            for (status, body), text in zip(answers, inputs, strict=True)
            if status == 200 and body["input"] == text and body["result"].isdigit()
        )
        result["answered_correctly"] = correct

    asyncio.run(run())
    return result


def gthread_comparison(env: dict[str, str], logs: Path, waiting: int = 64) -> dict[str, Any]:
    web, port = start_web("gthread", env, logs)
    try:

        async def run() -> dict[str, Any]:
            clients = [
                asyncio.create_task(http(port, "POST", "/predict", {"input": f"g{i}"}, timeout=20))
                for i in range(waiting)
            ]
            await asyncio.sleep(3)
            health = [await timed(port, "GET", "/api/health/", timeout=1) for _ in range(10)]
            for client in clients:
                client.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            return {
                "waiting": waiting,
                "GET /api/health/": summary(health),
                "health_answered_within_1s": sum(1 for seconds in health if seconds < 1),
                "health_tried": len(health),
            }

        return {"server": "gunicorn -k gthread -w 2 --threads 8", **asyncio.run(run())}
    finally:
        web.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--skip-gthread", action="store_true")
    args = parser.parse_args()
    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url.startswith("postgres"):
        pgcluster = [sys.executable, str(ROOT / "tests" / "support" / "pgcluster.py"), "--"]
        os.execv(
            sys.executable, [*pgcluster, sys.executable, "-m", "bench.bench_predict", *sys.argv[1:]]
        )

    logs = ROOT / "var" / "bench-predict"
    logs.mkdir(parents=True, exist_ok=True)
    db = BenchDatabase(server_url)
    env = {
        **os.environ,
        "DATABASE_URL": db.url,
        "ZYPHER_OPEN_MODE": "1",
        "ZYPHER_PREDICT_WAIT_SECONDS": "600",
        "PYTHONUNBUFFERED": "1",
    }
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "server": "gunicorn zypher.asgi -w 2 -k uvicorn_worker.UvicornWorker",
        "database": "PostgreSQL (LISTEN/NOTIFY)",
    }
    started = time.monotonic()
    web = None
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
        )
        web, port = start_web("asgi", env, logs)
        dispatcher = start_dispatcher(env, logs, devices=1, delay=MODEL_SECONDS)
        try:
            results["idle_device"] = idle_overhead(port, db)
        finally:
            dispatcher.stop()
        results["many_waiting"] = many_waiting(port, web, db, env, logs, args.waiting)
        web.stop()
        web = None
        if not args.skip_gthread:
            results["gthread_for_comparison"] = gthread_comparison(env, logs)
    finally:
        if web is not None:
            web.stop()
        db.drop()
    results["bench_seconds"] = round(time.monotonic() - started, 1)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


def print_table(results: dict[str, Any]) -> None:
    idle = results["idle_device"]
    many = results["many_waiting"]
    rows = [
        ("sync overhead, idle device (median / p95)", ms(idle["overhead"])),
        ("  request -> model starts", ms(idle["request_to_model_start"])),
        ("  job ends -> response", ms(idle["job_end_to_response"])),
        ("sync requests waiting at once", str(many["waiting"])),
        ("  submitted in", f"{many['all_submitted_seconds']} s"),
        ("  web RSS idle -> loaded (2 workers)", rss(many)),
        ("  web threads idle -> loaded", threads(many)),
        ("  database connections (all processes)", str(many["db_connections"])),
    ]
    rows += [(f"  meanwhile {name}", ms(s)) for name, s in many["meanwhile"].items()]
    rows += [
        ("  answered correctly", f"{many['answered_correctly']} / {many['waiting']}"),
        ("  drained by 4 devices in", f"{many['drain_seconds']} s"),
    ]
    if "gthread_for_comparison" in results:
        gthread = results["gthread_for_comparison"]
        answered = f"{gthread['health_answered_within_1s']} / {gthread['health_tried']}"
        rows.append(
            (
                f"gthread 2x8, {gthread['waiting']} waiting: GET /api/health/ within 1 s",
                answered,
            )
        )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def ms(stats: dict[str, float]) -> str:
    return f"{stats['median_ms']} / {stats['p95_ms']} ms"


def rss(many: dict[str, Any]) -> str:
    return f"{many['idle_web']['rss_mib']} -> {many['loaded_web']['rss_mib']} MiB"


def threads(many: dict[str, Any]) -> str:
    return f"{many['idle_web']['threads']} -> {many['loaded_web']['threads']}"


if __name__ == "__main__":
    main()
