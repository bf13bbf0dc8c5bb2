"""The container files' own checks, without a container runtime."""

from __future__ import annotations

from pathlib import Path

from .standins import apt_mirror

ROOT = Path(__file__).resolve().parents[2]


def requirement_lines(path: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def test_the_image_installs_what_the_services_import_and_make_installs_it_too() -> None:
    """One list of runtime requirements: the image installs docker/requirements.txt and
    requirements.txt includes it, so a dependency added for the services reaches both
    (psycopg-pool once reached only the development install, and the image's web 500ed)."""
    image = requirement_lines(ROOT / "docker" / "requirements.txt")
    development = requirement_lines(ROOT / "requirements.txt")
    assert {"psycopg[binary]>=3.2,<4", "psycopg-pool>=3.2,<4", "Django>=5.2,<5.3"} <= image
    assert "-r docker/requirements.txt" in development
    assert not image & development, "listed twice: keep runtime lines in docker/requirements.txt"


def test_the_stand_in_mirror_is_read_from_either_apt_sources_format(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: trixie-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: trixie\n"
    )
    one_line = tmp_path / "sources.list"
    one_line.write_text("# a comment\ndeb [arch=amd64] http://other.example/debian trixie main\n")
    assert apt_mirror([deb822]) == "http://mirror.example/debian"
    assert apt_mirror([tmp_path / "missing", one_line]) == "http://other.example/debian"
