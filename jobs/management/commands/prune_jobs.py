"""`python manage.py prune_jobs --older-than 30d`: delete ended jobs in small batches."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.retention import DEFAULT_BATCH_SIZE, parse_age, prune_ended_jobs


class Command(BaseCommand):
    help = (
        "Delete succeeded, failed and cancelled jobs that finished longer ago than "
        "--older-than (e.g. 30d, 12h), a batch per transaction; queued and running jobs, "
        "and jobs of programs whose callback is pending, are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than", required=True, help="age: a whole number and d, h, m or s (30d)"
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            help=f"jobs deleted per transaction (default {DEFAULT_BATCH_SIZE})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            older_than = parse_age(options["older_than"])
        except ValueError as error:
            raise CommandError(str(error)) from None
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")

        def report(batch: int, deleted: int) -> None:
            self.stdout.write(f"batch {batch}: deleted {deleted} jobs")

        total = prune_ended_jobs(older_than, batch_size=options["batch_size"], on_batch=report)
        self.stdout.write(f"pruned {total} jobs that ended more than {options['older_than']} ago")
