"""`python manage.py run_dispatcher`: the scheduling loop and the local devices.

SIGTERM or Ctrl-C stops it within ZYPHER_SHUTDOWN_GRACE_SECONDS (at once when no job
runs), database reachable or not; a second signal within two seconds. Exit status 1
means it gave up on a failure; restart it (`make run` does).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.dispatcher.loop import Dispatcher, run_until_stopped
from devices.process_logging import log_to_stdout


class Command(BaseCommand):
    help = (
        "Run the fair-share dispatcher with local worker-process devices until SIGTERM or Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--devices",
            type=int,
            default=settings.ZYPHER_LOCAL_DEVICES,
            help="number of local devices (worker processes); default ZYPHER_LOCAL_DEVICES or 1",
        )
        parser.add_argument(
            "--device-type",
            default=settings.ZYPHER_LOCAL_DEVICE_TYPE,
            help="the pool the local devices serve; default ZYPHER_LOCAL_DEVICE_TYPE or cpu",
        )
        parser.add_argument(
            "--name", default=None, help="this dispatcher's name in logs and device names"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["devices"] < 0:
            raise CommandError("--devices must be 0 or more")
        log_to_stdout()
        dispatcher = Dispatcher(
            [(options["device_type"], options["devices"])], name=options["name"]
        )
        # Ends the process with the dispatcher's exit status: 0 after SIGTERM or Ctrl-C,
        # 1 when it gave up (a background task that keeps crashing, the main loop failed).
        run_until_stopped(dispatcher)
