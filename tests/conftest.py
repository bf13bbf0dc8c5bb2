"""Fixtures that start real things: the web server, dispatchers, on the test database.

The suite runs twice under `make test`: on SQLite, then on a throwaway PostgreSQL
(tests/support/pgcluster.py sets DATABASE_URL). Tests marked `postgres` skip on SQLite.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from tests.support.processes import (
    Gateway,
    ServiceProcess,
    start_gateway,
    start_service,
    stop_all,
)

ROOT = Path(__file__).resolve().parent.parent
TEST_HANDLERS = {
    "sleep": "tests.support.handlers:sleep",
    "boom": "tests.support.handlers:boom",
    "crash": "tests.support.handlers:crash",
    "not_a_number": "tests.support.handlers:not_a_number",
    "nul_string": "tests.support.handlers:nul_string",
    "huge": "tests.support.handlers:huge",
    "nul_error": "tests.support.handlers:nul_error",
}


def on_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def postgres_pass_follows() -> bool:
    """This is the SQLite pass of `make test` and a PostgreSQL pass runs the suite next."""
    return not on_postgres() and os.environ.get("ZYPHER_POSTGRES_PASS_FOLLOWS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if on_postgres():
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: runs in the PostgreSQL pass of `make test`")
    # `make test-sqlite` sets this when a PostgreSQL pass follows (tests/support/pgcluster.py).
    once = postgres_pass_follows()
    skip_once = pytest.mark.skip(reason="one_pass: runs in the PostgreSQL pass of `make test`")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)
        elif once and "one_pass" in item.keywords:
            item.add_marker(skip_once)


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_run() -> Iterator[None]:
    """Session finalizer: kill the process group of every service a fixture left running.

    A run killed with SIGKILL skips this; the parent-death signal and the reaper process
    of tests/support/processes.py cover that case.
    """
    yield
    stop_all()


@pytest.fixture(autouse=True)
def test_handlers(settings: Any) -> None:
    """The test handlers are known in-process too, and the pool-id cache starts empty."""
    from jobs import handlers, queue

    settings.ZYPHER_HANDLERS = TEST_HANDLERS
    handlers.resolve_handler.cache_clear()
    queue._pool_ids.clear()


@pytest.fixture
def subprocess_env(transactional_db: None, tmp_path: Path) -> dict[str, str]:
    """Environment for gateway and dispatcher subprocesses, on this test's database."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "ZYPHER_OPEN_MODE": "1",
        "ZYPHER_LEASE_SECONDS": "3",
        "ZYPHER_LIMITED_F_SECONDS": "0.02",
        "ZYPHER_PREDICT_DELAY": "0.05,0.1",
        "ZYPHER_HANDLERS": json.dumps(TEST_HANDLERS),
        "ZYPHER_TEST_EXEC_LOG": str(tmp_path / "executions.log"),
        "ZYPHER_SHUTDOWN_GRACE_SECONDS": "5",
    }
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    else:
        env.pop("DATABASE_URL", None)
        env["ZYPHER_SQLITE_PATH"] = str(db["NAME"])
    return env


@pytest.fixture
def gateway(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Gateway]:
    """The web server (gunicorn, gunicorn.conf.py) serving the app on a free port."""
    process, url = start_gateway(subprocess_env, tmp_path)
    yield Gateway(process, url)
    process.stop()


@pytest.fixture
def start_dispatcher(
    subprocess_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start `manage.py run_dispatcher` subprocesses; all are stopped at the end."""
    started: list[ServiceProcess] = []

    def start(
        devices: int = 1, device_type: str = "cpu", name: str | None = None, **env: str
    ) -> ServiceProcess:
        name = name or f"dispatcher{len(started)}"
        command = [sys.executable, "manage.py", "run_dispatcher", "--devices", str(devices)]
        command += ["--device-type", device_type, "--name", name]
        process = start_service(name, command, {**subprocess_env, **env}, tmp_path, "running")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def executions(subprocess_env: dict[str, str]) -> list[str]:
    """The tags the `sleep` handler logged, one per completed execution."""
    path = Path(subprocess_env["ZYPHER_TEST_EXEC_LOG"])
    return path.read_text().split() if path.exists() else []
