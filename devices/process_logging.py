"""Logging for the long-running commands (run_dispatcher, run_device): one line per
event on stdout, where an operator or a test reads them."""

from __future__ import annotations

import logging
import sys


def log_to_stdout() -> None:
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        force=True,
    )
    # The settings' handler for "zypher" would print every line twice.
    logging.getLogger("zypher").handlers.clear()
    logging.getLogger("zypher").propagate = True
