"""Podman and podman-compose for the container test: tools, the app image, the stack.

Plain Python (no pytest). Settings this VM needs go on the command line (`--runtime runc`,
ulimits), never into the machine's configuration. Containers outlive the processes that
start them (conmon holds them), so a watcher process, detached from the test and fed by a
pipe, removes the stack, its volumes and networks and the app image when the test process
ends however it ends; a run also removes what dead runs left, found by project name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.support.processes import ROOT, popen_tied

from . import standins

PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
PODMAN_COMPOSE = "podman-compose==1.6.0"
PROJECT_PREFIX = "zypherct"
PROJECT_LABEL = "io.podman.compose.project"
VENV_DIR = standins.CACHE_DIR / "podman-compose-venv"
CACHE_BUILD_STAGE = "localhost/zypher-containers-cache:build-stage"
CACHE_APP = "localhost/zypher-containers-cache:app"


# `down` for everything `up` may have made: the profile's agents, and (podman-compose
# knows only the first replica by name) the scaled-out dispatchers as "orphans".
DOWN_ALL = ("--profile", "qpu", "down", "--remove-orphans")


def scale_up(service: str, replicas: int) -> list[str]:
    """Podman 4.3 (Debian 12) cannot start a service whose `--requires` chain holds the
    exited one-shot `migrate`, so, as for the first `up`, without dependencies; podman-compose
    1.6 creates the missing replicas and leaves the running ones alone."""
    return ["up", "-d", "--no-deps", "--scale", f"{service}={replicas}", service]


def profile_up(profile: str, *services: str) -> list[str]:
    return ["--profile", profile, "up", "-d", "--no-deps", *services]


class Unavailable(Exception):
    """Podman cannot run here; the message says why."""


def run(command: Sequence[str], timeout: float = 600, **kwargs: object) -> str:
    """Run a tool tied to this process; raise with its output when it fails."""
    process = popen_tied(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise RuntimeError(
            f"timed out after {timeout} s: {' '.join(command)}\n{output.decode()}"
        ) from None
    if process.returncode != 0:
        raise RuntimeError(
            f"exit {process.returncode}: {' '.join(command)}\n{output.decode(errors='replace')[-4000:]}"
        )
    return output.decode(errors="replace")


def runner(command: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    output = run(command)
    return subprocess.CompletedProcess(list(command), 0, output.encode(), b"")


def ensure_tools(log: Callable[[str], None]) -> Path:
    """Podman, runc and debootstrap (apt, as root), podman-compose in a venv of its own."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        if os.geteuid() != 0:
            raise Unavailable(f"needs {', '.join(missing)} and root to install them")
        log(f"installing {' '.join(missing)} with apt")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", *missing], env=env)
    if os.geteuid() != 0:
        raise Unavailable("runs podman as root (rootless podman is not set up here)")
    try:
        run([*PODMAN, "info", "--format", "{{.Host.OCIRuntime.Name}}"], timeout=60)
    except RuntimeError as error:
        raise Unavailable(f"podman cannot run: {error}") from error
    compose = VENV_DIR / "bin" / "podman-compose"
    if not compose.exists():
        log(f"installing {PODMAN_COMPOSE} into {VENV_DIR}")
        venv.create(VENV_DIR, with_pip=True, clear=True)
        run([str(VENV_DIR / "bin" / "pip"), "install", "-q", PODMAN_COMPOSE])
    return compose


def pip_index_args() -> list[str]:
    """The host's pip index (PIP_INDEX_URL or pip's config) as a build argument."""
    value = os.environ.get("PIP_INDEX_URL", "")
    if not value:
        found = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
        )
        value = found.stdout.strip() if found.returncode == 0 else ""
    return ["--build-arg", f"PIP_INDEX_URL={value}"] if value else []


def build_app_image(tag: str, project: str, log: Callable[[str], None]) -> None:
    """The repository's Dockerfile as it is; pip in the build trusts the host's CA bundle
    through a bind mount (pip ships its own CA list, hence PIP_CERT)."""
    ca_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    trust: list[str] = []
    if ca_bundle.exists():
        trust = ["-v", f"{ca_bundle}:{ca_bundle}:ro", "--build-arg", f"PIP_CERT={ca_bundle}"]
    build = [*PODMAN, "build", "--format", "docker", "--pull=never", *ULIMITS, *trust]
    build += pip_index_args()
    # The layer cache survives the run under cache tags (like the stand-ins), so that a
    # run downloads the dependencies again only when docker/requirements.txt changed.
    previous = image_id(CACHE_APP)
    log("building the dependencies stage (cached unless docker/requirements.txt changed)")
    run([*build, "--target", "build", "-t", CACHE_BUILD_STAGE, str(ROOT)], timeout=900)
    log(f"building the app image {tag}")
    run([*build, "--label", f"{PROJECT_LABEL}={project}", "-t", tag, str(ROOT)], timeout=900)
    run([*PODMAN, "tag", tag, CACHE_APP])
    if previous and previous != image_id(CACHE_APP):
        subprocess.run([*PODMAN, "rmi", previous], stdin=subprocess.DEVNULL, capture_output=True)


def image_id(name: str) -> str:
    found = subprocess.run(
        [*PODMAN, "image", "inspect", "--format", "{{.Id}}", name],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 else ""


class Stack:
    """One compose project of this test run: `up`, `ps`, `down` through podman-compose."""

    def __init__(self, compose: Path, project: str, env: dict[str, str]) -> None:
        self.compose = compose
        self.project = project
        self.env = {**os.environ, **env}

    def compose_command(self, *args: str) -> list[str]:
        return [
            str(self.compose),
            "--podman-args=--runtime runc",
            f"--podman-run-args={' '.join(ULIMITS)}",  # `run` and `create`
            "--in-pod=false",
            "-p",
            self.project,
            "-f",
            str(ROOT / "compose.yaml"),
            *args,
        ]

    def compose_run(self, *args: str, timeout: float = 300) -> str:
        return run(self.compose_command(*args), timeout=timeout, env=self.env, cwd=ROOT)

    def containers(self, service: str | None = None) -> list[dict[str, object]]:
        filters = ["--filter", f"label={PROJECT_LABEL}={self.project}"]
        if service:
            filters += ["--filter", f"label=io.podman.compose.service={service}"]
        output = run([*PODMAN, "ps", "-a", "--format", "json", *filters], timeout=60)
        return list(json.loads(output or "[]"))

    def inspect(self, name: str) -> dict[str, object]:
        return dict(json.loads(run([*PODMAN, "inspect", name], timeout=60))[0])

    def logs(self) -> str:
        texts = []
        for container in self.containers():
            name = str(container["Names"][0])  # type: ignore[index]
            try:
                texts.append(f"--- {name}\n" + run([*PODMAN, "logs", "--tail", "60", name]))
            except RuntimeError as error:
                texts.append(f"--- {name}: {error}")
        return "\n".join(texts)


def remove_project(project: str, image: str | None) -> None:
    """Everything a compose project made, found by its label; then the app image."""
    label = f"label={PROJECT_LABEL}={project}"
    for command in (
        [*PODMAN, "rm", "-f", "-t", "0", "--filter", label],
        # `rm` of volumes and networks takes no filter in Podman 4.3; `prune` does, and
        # with the containers gone nothing of the project is in use.
        [*PODMAN, "volume", "prune", "-f", "--filter", label],
        [*PODMAN, "network", "prune", "-f", "--filter", label],
    ):
        subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if image:
        subprocess.run([*PODMAN, "rmi", "-f", image], stdin=subprocess.DEVNULL, capture_output=True)


# The watcher: started in a session of its own, not tied to the test, reads its stdin
# until the test process's end closes it, then removes the project and the image.
_WATCHER_SOURCE = """
import signal, subprocess, sys, os
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while os.read(0, 4096):
    pass
sys.path.insert(0, sys.argv[1])
from tests.containers.stack import remove_project
remove_project(sys.argv[2], sys.argv[3] or None)
"""


def start_watcher(project: str, image: str) -> int:
    """Returns the write end of the watcher's pipe: close it to clean up now."""
    read_end, write_end = os.pipe()
    subprocess.Popen(
        [sys.executable, "-c", _WATCHER_SOURCE, str(ROOT), project, image],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    os.close(read_end)
    os.set_inheritable(write_end, False)
    return write_end


def remove_dead_runs(log: Callable[[str], None]) -> None:
    """Stacks of earlier runs whose test process is gone (kill -9 beat the watcher)."""
    listings = [
        [*PODMAN, "ps", "-a", "--format", "{{.Names}}"],
        [*PODMAN, "volume", "ls", "--format", "{{.Name}}"],
        [*PODMAN, "network", "ls", "--format", "{{.Name}}"],
        [*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}"],
    ]
    names = "\n".join(
        subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True).stdout
        for command in listings
    )
    projects = set(re.findall(rf"\b({PROJECT_PREFIX}(\d+))(?!\d)", names))
    for project, pid in sorted(projects):
        if not Path(f"/proc/{pid}").exists():
            log(f"removing what the dead run {project} left")
            remove_project(project, f"localhost/zypher-test:{project}")
