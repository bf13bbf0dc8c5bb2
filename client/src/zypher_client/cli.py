"""`zypher`: the command line of the client. JSON answers go to stdout, everything a
person watches (queue position, progress bar, errors) to stderr.

Exit status: 0 succeeded, 1 failed (a job that failed or was cancelled, an error from the
server, no server), 2 usage (argparse's own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from zypher_client.client import DEFAULT_URL, Client
from zypher_client.errors import ZypherError
from zypher_client.jobs import Job

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_input(text: str) -> Any:
    """A job's input from the command line: JSON (`5`, `[1, 2]`, `{"a": 1}`), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zypher", description="Submit, follow and cancel jobs of a Zypher gateway."
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("ZYPHER_URL", DEFAULT_URL),
        help=f"the gateway (ZYPHER_URL; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token", default=os.environ.get("ZYPHER_TOKEN"), help="API token (ZYPHER_TOKEN)"
    )
    parser.add_argument(
        "--user",
        default=os.environ.get("ZYPHER_USER"),
        help="open mode: the user to act as (ZYPHER_USER)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="queue a job; --wait follows it to its end")
    submit.add_argument("input", help="the job's input: JSON, or else taken as a string")
    submit.add_argument("--kind", help="the handler (server default: limited_f)")
    submit.add_argument("--priority", type=int, help="-100..100, orders your own jobs")
    submit.add_argument("--device-type", help="the device pool")
    submit.add_argument("--callback-url", help="the server POSTs the job here when it ends")
    submit.add_argument("--key", help="Idempotency-Key (default: a new one)")
    submit.add_argument("--wait", action="store_true", help="wait and print the result")
    submit.add_argument("--timeout", type=float, help="with --wait: give up after S seconds")

    wait = commands.add_parser("wait", help="follow a job to its end and print its result")
    wait.add_argument("id")
    wait.add_argument("--timeout", type=float, help="give up after S seconds")

    get = commands.add_parser("get", help="print a job")
    get.add_argument("id")

    cancel = commands.add_parser("cancel", help="cancel a queued job")
    cancel.add_argument("id")

    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--all-users", action="store_true", help="staff: every user's jobs")

    predict = commands.add_parser("predict", help="run the prediction model on a text")
    predict.add_argument("input")
    predict.add_argument(
        "--async", dest="asynchronous", action="store_true", help="print the prediction id"
    )
    return parser


class JobProgress:
    """The live view of a waited-for job on stderr: the queue position while it waits, a
    progress bar while it runs. Without a terminal, one line per change instead."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> JobProgress:
        if self.console.is_terminal:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, job: Job) -> None:
        description = describe(job)
        if not self.console.is_terminal:
            self.console.print(description, highlight=False, markup=False)
            return
        # Percent: rich's types want whole numbers; None pulses the bar while queued.
        total = 100 if job.status == "running" and job.progress is not None else None
        completed = round((job.progress or 0.0) * 100)
        if self.task is None:
            self.task = self.progress.add_task(description, total=total, completed=completed)
        else:
            self.progress.update(
                self.task, description=description, total=total, completed=completed
            )


def describe(job: Job) -> str:
    if job.status == "queued":
        position = "" if job.queue_position is None else f", position {job.queue_position}"
        return f"{job.id} queued{position}"
    if job.status == "running":
        percent = "" if job.progress is None else f" {job.progress:.0%}"
        message = f": {job.progress_message}" if job.progress_message else ""
        return f"{job.id} running{percent}{message}"
    return f"{job.id} {job.status}"


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def follow(client: Client, job_id: str, timeout: float | None, stderr: Console) -> int:
    """Wait for the job with the live view; its result on stdout, or its error on stderr."""
    with JobProgress(stderr) as view:
        job = client.wait(job_id, timeout=timeout, on_update=view.update)
    if job.succeeded:
        print_json(job.result)
        return EXIT_OK
    stderr.print(
        f"zypher: job {job.id} {job.status}: {job.error or job.status}",
        highlight=False,
        markup=False,
    )
    return EXIT_FAILED


def run(args: argparse.Namespace, client: Client, stderr: Console) -> int:
    if args.command == "submit":
        job = client.submit(
            parse_input(args.input),
            kind=args.kind,
            priority=args.priority,
            device_type=args.device_type,
            callback_url=args.callback_url,
            idempotency_key=args.key,
        )
        if not args.wait:
            print_json(job.data)
            return EXIT_OK
        return follow(client, job.id, args.timeout, stderr)
    if args.command == "wait":
        return follow(client, args.id, args.timeout, stderr)
    if args.command == "get":
        print_json(client.get(args.id).data)
    elif args.command == "cancel":
        print_json(client.cancel(args.id).data)
    elif args.command == "jobs":
        if args.all_users:
            client.user = None
        jobs = client.jobs(status=args.status, limit=args.limit)
        print_json([job.data for job in jobs])
    elif args.command == "predict":
        if args.asynchronous:
            print_json({"prediction_id": client.predict(args.input, sync=False)})
        else:
            print_json(client.predict(args.input))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    stderr = Console(stderr=True)
    try:
        with Client(args.url, token=args.token, user=args.user) as client:
            return run(args, client, stderr)
    except ZypherError as exc:
        stderr.print(f"zypher: error: {exc.message}", highlight=False, markup=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        stderr.print("zypher: interrupted (the job goes on)", highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
