"""The container files' own checks, without a container runtime."""

from __future__ import annotations

from pathlib import Path

from .standins import apt_mirror

ROOT = Path(__file__).resolve().parents[2]


def requirement_lines(path: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def test_the_image_installs_only_lines_of_requirements_txt_as_written() -> None:
    image = requirement_lines(ROOT / "docker" / "requirements.txt")
    assert image, "docker/requirements.txt is empty"
    assert image <= requirement_lines(ROOT / "requirements.txt"), image - requirement_lines(
        ROOT / "requirements.txt"
    )


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
