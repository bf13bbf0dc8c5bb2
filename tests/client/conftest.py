"""One gateway (gunicorn) and one dispatcher for the whole tests/client package.

Starting servers per test would cost seconds each; these start once, in open mode, on a
database of their own (a SQLite file, or a database created on the PostgreSQL server of
DATABASE_URL), migrated once and removed at the end. Tests here talk HTTP only, each as a
user of its own, so that they do not see each other's jobs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.processes import Gateway, ServiceProcess, start_gateway, start_service

MAX_QUEUED = 20  # per user: small, so that a test reaches the 429 with one bulk submit
HANDLERS = {
    "hold": "tests.client.handlers:hold",
    "boom": "tests.support.handlers:boom",
}
ROOT = Path(__file__).resolve().parents[2]

# The client of this checkout, not whichever copy `pip install ./client` last put in the
# environment: here (the tests import it after this conftest) and in the `zypher` console
# script the CLI tests start (it inherits PYTHONPATH).
CLIENT_SOURCE = str(ROOT / "client" / "src")
if CLIENT_SOURCE not in sys.path:
    sys.path.insert(0, CLIENT_SOURCE)
_pythonpath = os.environ.get("PYTHONPATH", "")
if CLIENT_SOURCE not in _pythonpath.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [CLIENT_SOURCE, _pythonpath]))


@pytest.fixture(scope="package")
def server_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment variables that point a process at the package's own database."""
    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url.startswith(("postgres://", "postgresql://")):
        path = tmp_path_factory.mktemp("client-db") / "zypher.sqlite3"
        yield {"ZYPHER_SQLITE_PATH": str(path)}
        return
    import psycopg

    name = f"zypher_client_tests_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield {"DATABASE_URL": urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))}
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _service_env(database: dict[str, str], log_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WEB_WORKERS": "1",  # starts faster; async workers hold many waits each
        "ZYPHER_OPEN_MODE": "1",
        "ZYPHER_LIMITED_F_SECONDS": "0.02",
        "ZYPHER_PREDICT_DELAY": "0.02,0.05",
        "ZYPHER_HANDLERS": json.dumps(HANDLERS),
        "ZYPHER_SHUTDOWN_GRACE_SECONDS": "2",
        "ZYPHER_MAX_QUEUED_PER_USER": str(MAX_QUEUED),
        "ZYPHER_TEST_EXEC_LOG": str(log_dir / "executions.log"),
    }
    env.pop("DATABASE_URL", None)
    return {**env, **database}


@pytest.fixture(scope="package")
def server(
    server_database: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """gunicorn and `run_dispatcher` (one cpu device), shared by the package's tests."""
    log_dir = tmp_path_factory.mktemp("client-servers")
    env = _service_env(server_database, log_dir)
    migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v0"]
    subprocess.run(migrate, cwd=ROOT, env=env, check=True, timeout=300)
    gunicorn: ServiceProcess | None = None
    dispatcher: ServiceProcess | None = None
    try:
        gunicorn, url = start_gateway(env, log_dir)
        command = [sys.executable, "manage.py", "run_dispatcher", "--devices", "1"]
        command += ["--device-type", "cpu", "--name", "clientdispatcher"]
        dispatcher = start_service("dispatcher", command, env, log_dir, "running")
        yield Gateway(gunicorn, url)
    finally:
        for process in (dispatcher, gunicorn):
            if process is not None:
                process.stop()


@pytest.fixture
def user(request: pytest.FixtureRequest) -> str:
    """A user name of this test's own (open mode creates it on first use)."""
    return "c-" + re.sub(r"[^\w.@+-]", "-", request.node.name.removeprefix("test_"))[:100]


@pytest.fixture
def release_dir(tmp_path: Path) -> Iterator[Path]:
    """Where a test creates the files that release its `hold` jobs. Everything still held
    is released when the test ends, so the shared device is free for the next test."""
    yield tmp_path
    for marker in tmp_path.glob("*.release-me"):
        marker.with_suffix(".go").touch()
