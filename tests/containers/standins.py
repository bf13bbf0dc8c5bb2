"""Local stand-ins for the base images `python:3.13-slim` and `postgres:16`.

No image registry is reachable here, so both bases are built from a `debootstrap` of
Debian trixie through the machine's own apt mirror (read from its apt sources, never
written into the repository). They are cached between runs on one machine: the rootfs
tarball and the tagged images under the names the Dockerfile and compose file use.

What they do not prove: the official images' own interpreter build (python.org's
CPython in /usr/local, here Debian's python3.13) and PostgreSQL's major version (trixie
ships 17, the stand-in for `postgres:16` runs it). Plain Python, no pytest.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

CACHE_DIR = Path("/var/cache/zypher-containers")
HERE = Path(__file__).resolve().parent / "standins"
SUITE = "trixie"
# One rootfs for both bases: the Python stand-in ignores PostgreSQL and the other way round.
PACKAGES = [
    "ca-certificates",
    "python3.13",
    "python3.13-venv",
    "postgresql",
    "curl",
]
PYTHON_IMAGE = "docker.io/library/python:3.13-slim"
POSTGRES_IMAGE = "docker.io/library/postgres:16"
STANDIN_LABEL = "zypher.standin"

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[bytes]]


def apt_mirror(sources: Sequence[Path] | None = None) -> str:
    """The first Debian archive URI in the machine's apt sources (one-line or deb822)."""
    if sources is None:
        etc = Path("/etc/apt")
        sources = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        uris = re.findall(r"^\s*URIs:\s*(\S+)", text, re.MULTILINE)
        uris += re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.MULTILINE)
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    raise RuntimeError("no Debian archive found in /etc/apt/sources.list*")


def rootfs_tarball(log: Callable[[str], None], run: Runner) -> Path:
    """A gzip-free tar of a trixie minbase with PACKAGES, made once per machine."""
    tarball = CACHE_DIR / f"{SUITE}-rootfs.tar"
    if tarball.exists():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    mirror = apt_mirror()
    log(f"debootstrap {SUITE} from {mirror} (once per machine, a few minutes)")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
        target = Path(work) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(target),
                mirror,
            ]
        )
        # Lists and caches are stale the moment the tarball is made: leave them out.
        for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
            shutil.rmtree(target / leftover, ignore_errors=True)
            (target / leftover / "partial").mkdir(parents=True, exist_ok=True)
        partial = Path(work) / "rootfs.tar"
        run(["tar", "-C", str(target), "--numeric-owner", "-cf", str(partial), "."])
        partial.rename(tarball)
    return tarball


def image_exists(podman: Sequence[str], name: str) -> bool:
    return (
        subprocess.run([*podman, "image", "exists", name], stdin=subprocess.DEVNULL).returncode == 0
    )


def ensure_standins(podman: Sequence[str], log: Callable[[str], None], run: Runner) -> None:
    """Tag local stand-ins as python:3.13-slim and postgres:16 unless both are present."""
    if image_exists(podman, PYTHON_IMAGE) and image_exists(podman, POSTGRES_IMAGE):
        log("stand-in bases cached")
        return
    rootfs = f"localhost/zypher-standin-rootfs:{SUITE}"
    if not image_exists(podman, rootfs):
        tarball = rootfs_tarball(log, run)
        log("importing the rootfs")
        run([*podman, "import", "--change", f"LABEL {STANDIN_LABEL}=rootfs", str(tarball), rootfs])
    for image, containerfile in (
        (PYTHON_IMAGE, "python.Containerfile"),
        (POSTGRES_IMAGE, "postgres.Containerfile"),
    ):
        log(f"building the stand-in {image}")
        run(
            [
                *podman,
                "build",
                "--format",
                "docker",
                "--network",
                "none",
                "--build-arg",
                f"ROOTFS={rootfs}",
                "-f",
                str(HERE / containerfile),
                "-t",
                image,
                str(HERE),
            ]
        )
