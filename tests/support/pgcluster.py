"""A throwaway PostgreSQL cluster for tests and benchmarks.

    python tests/support/pgcluster.py [--durable] -- COMMAND [ARGS...]

starts a cluster from the machine's PostgreSQL binaries in a temporary directory, runs
COMMAND with DATABASE_URL (and ZYPHER_TEST_PGDATA, ZYPHER_TEST_PGBIN, for fault drills)
pointing at it, then removes the cluster. With DATABASE_URL already set to PostgreSQL
it just runs COMMAND. Without any PostgreSQL it prints why and exits 0, unless
ZYPHER_REQUIRE_POSTGRES=1 (CI), where that is a failure.

`initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import contextlib

from tests.support.processes import free_port  # noqa: E402


def find_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for candidate in reversed(candidates):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """Start, stop and restart one throwaway cluster (fsync off unless `durable`)."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="zypher-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgres://zypher@127.0.0.1:{self.port}/zypher"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "zypher", "-E", "UTF8", "--no-sync"
        )
        settings = [
            "listen_addresses='127.0.0.1'",
            f"port={self.port}",
            f"unix_socket_directories='{self.root}'",
            "max_connections=300",
            "shared_buffers=256MB",
        ]
        if not self.durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n".join(settings) + "\n")
        self.resume()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "zypher", "zypher")

    def resume(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start")

    def pause(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.pause()
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv == ["--available"]:  # exit status only: will a PostgreSQL pass run here?
        return 0 if os.environ.get("DATABASE_URL") or find_bindir() else 1
    durable = "--durable" in argv[: argv.index("--")] if "--" in argv else False
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print(
            "usage: python tests/support/pgcluster.py [--durable] -- COMMAND [ARGS...]\n"
            "       python tests/support/pgcluster.py --available",
            file=sys.stderr,
        )
        return 2
    command = argv[argv.index("--") + 1 :]
    if os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        return subprocess.call(command)
    bindir = find_bindir()
    if bindir is None:
        reason = "no PostgreSQL binaries found (initdb); the PostgreSQL test run is SKIPPED"
        if os.environ.get("ZYPHER_REQUIRE_POSTGRES") == "1":
            print(f"pgcluster: {reason}, but ZYPHER_REQUIRE_POSTGRES=1", file=sys.stderr)
            return 1
        print(f"pgcluster: {reason}", file=sys.stderr)
        return 0
    cluster = PostgresCluster(bindir, durable=durable)
    # SIGTERM (a CI timeout, kill) must still remove the cluster: run the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        cluster.start()
        print(f"pgcluster: PostgreSQL from {bindir} at {cluster.url}", file=sys.stderr)
        env = {
            **os.environ,
            "DATABASE_URL": cluster.url,
            "ZYPHER_TEST_PGDATA": str(cluster.data),
            "ZYPHER_TEST_PGBIN": str(bindir),
        }
        return subprocess.call(command, env=env)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
