"""Plain helpers of the client tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import threading
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


class StderrLines:
    """The lines a running CLI has written to stderr so far, read by a thread of their own."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self._stream = process.stderr
        self._incoming: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._stream:
            self._incoming.put(line)

    def saw(self, text: str) -> bool:
        """Whether any line so far contains `text`."""
        while not self._incoming.empty():
            self.seen.append(self._incoming.get())
        return any(text in line for line in self.seen)
