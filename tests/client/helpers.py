"""Plain helpers of the client tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ZYPHER = Path(sys.executable).parent / "zypher"  # the console script of `pip install ./client`


def hold_input(release_dir: Path, tag: str) -> dict[str, Any]:
    """The input of a `hold` job released by `release(release_dir, tag)`."""
    (release_dir / f"{tag}.release-me").touch()
    return {"release": str(release_dir / f"{tag}.go"), "tag": tag}


def release(release_dir: Path, tag: str) -> None:
    (release_dir / f"{tag}.go").touch()


def zypher_command() -> list[str]:
    if not ZYPHER.exists() and not shutil.which("zypher"):
        pytest.fail("the zypher console script is not installed: pip install ./client")
    return [str(ZYPHER) if ZYPHER.exists() else "zypher"]
