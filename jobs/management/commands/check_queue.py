"""`python manage.py check_queue [--repair]`: report (and fix) broken queue invariants."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.invariants import find_violations, repair


class Command(BaseCommand):
    help = (
        "Check the queue's invariants (counters, leases, job fields); exit status 1 when "
        "any is broken. --repair fixes counters and unreaped leases under the right locks."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--repair", action="store_true", help="fix what can be fixed, then check again"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["repair"]:
            for violation in repair(repaired_by="check_queue"):
                self.stdout.write(f"repaired {violation}")
        violations = find_violations()
        for violation in violations:
            self.stdout.write(str(violation))
        if violations:
            self.stderr.write(f"{len(violations)} invariant violation(s)")
            raise SystemExit(1)
        self.stdout.write("queue invariants hold")
