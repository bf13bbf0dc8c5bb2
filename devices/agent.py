"""The device agent behind `run_device`: a device that takes commands over HTTP.

States (the published diagram): `unready` at start; `start` → `ready`; `stop` →
`unready`; `terminate` ends the agent from either. Control commands (`start`, `stop`,
`terminate`, `status`) are taken in any state; data commands (`ping`, `calculate`,
`run`) only when ready. Long work (`calculate`, `run`) runs in a background task, so the
agent always answers new messages at once, `ping` and `terminate` included.

Both ways: the gateway sends signed commands to `POST /commands`; the agent sends signed
reports to `POST <gateway>/api/devices/<id>/reports/` (a job finished, a job given back,
its state changed), so a job of minutes never holds a request open. It registers on
start (getting its secret; until then every command is refused with 503) and deregisters
on exit. Its answers are signed with the secret too (`protocol.sign_answer`).

A finished job's report is resent, with capped exponential backoff and jitter, until the
gateway accepts it or refuses it for good (the claim was fenced off, the device is no
longer known, a signature that will never pass); until then the job is listed as
`unreported` in `status`, with how long ago it ended, and the gateway keeps its lease
for a bounded time only (ZYPHER_DEVICE_UNREPORTED_SECONDS), then requeues it.

The running job's latest progress (its handler's or the mock QPU's `report_progress`)
travels in the `status` answer (`job.progress`, `job.progress_message`): the gateway
asks every few seconds anyway, so progress costs no message of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web

from devices import protocol
from devices.qpu.mock import run_mock_qpu
from jobs.progress import ProgressReporter, reporting

log = logging.getLogger("zypher.agent")

COMMAND_PATH = "/commands"
REGISTRATION_TOKEN_HEADER = "X-Zypher-Device-Token"


@dataclass
class AgentConfig:
    device_id: str
    device_type: str
    size: int
    host: str
    port: int
    gateway: str
    token: str
    url: str = ""
    qpu_seconds: float = 1.0
    max_age: float = protocol.DEFAULT_MAX_AGE_SECONDS
    # A state report is retried this long (the health checks correct the state anyway).
    report_retry_seconds: float = 60.0
    # A job's report is resent until answered for good, waiting first this long, doubling
    # up to the cap. Keep the cap well below the gateway's ZYPHER_DEVICE_UNREPORTED_SECONDS.
    report_backoff_seconds: float = 0.2
    report_backoff_max_seconds: float = 10.0

    def __post_init__(self) -> None:
        self.url = self.url or f"http://{self.host}:{self.port}"
        self.gateway = self.gateway.rstrip("/")


@dataclass
class RunningJob:
    job_id: str
    fencing_token: int
    kind: str
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    reporter: ProgressReporter = field(default_factory=ProgressReporter)

    def summary(self, now: float) -> dict[str, Any]:
        """The job as `status` shows it, with its latest progress if it reported any."""
        summary: dict[str, Any] = {
            "job_id": self.job_id,
            "fencing_token": self.fencing_token,
            "seconds": round(now - self.started, 3),
        }
        progress = self.reporter.peek()
        if progress is not None:
            summary["progress"] = progress.fraction
            summary["progress_message"] = progress.message
        return summary


@dataclass
class UnreportedResult:
    """A finished job's report that the gateway has not answered for good yet."""

    report: dict[str, Any]
    ended: float = field(default_factory=time.monotonic)
    attempts: int = 0


ReportOutcome = Literal["delivered", "refused", "retry"]

# 4xx answers that the same report will get again however often it is sent: the claim is
# no longer held (409), the device is unknown (404: removed, or registered again), the
# report is malformed (400) or too big (413), or the signature is wrong (401 "bad
# signature": the gateway holds another secret). A stale timestamp or a replayed nonce
# (also 401) is worth another try: each attempt is signed afresh.
_FINAL_STATUSES = frozenset({400, 401, 403, 404, 409, 410, 413, 422})
_RETRIED_401_PREFIXES = ("stale message", "replayed message")


def report_outcome(status: int, answer: dict[str, Any]) -> ReportOutcome:
    """What the gateway's answer to a report means for the agent."""
    if 200 <= status < 300:
        return "delivered"
    if status == 401 and str(answer.get("error", "")).startswith(_RETRIED_401_PREFIXES):
        return "retry"
    return "refused" if status in _FINAL_STATUSES else "retry"


def backoff_delay(attempt: int, first: float, cap: float) -> float:
    """Capped exponential backoff with jitter: a random wait in [d/2, d], d = first * 2^n
    capped, so that agents cut off together do not all come back in the same instant."""
    delay = min(cap, first * 2 ** min(attempt, 32))
    return random.uniform(delay / 2, delay)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class DeviceAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = "unready"
        self.secret = ""
        self.nonces = protocol.MemoryNonceStore(config.max_age)
        self.job: RunningJob | None = None
        self.calculations: set[asyncio.Task[None]] = set()
        # By (job id, fencing token): a job requeued while its first report was undelivered
        # may run here again, and each run's report is answered on its own.
        self.unreported: dict[tuple[str, int], UnreportedResult] = {}
        self.report_tasks: set[asyncio.Task[Any]] = set()
        self.terminated = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None

    # --- commands ---

    def answer(self, status: int, **fields: Any) -> tuple[int, dict[str, Any]]:
        return status, {"ok": status == 200, "state": self.state, **fields}

    async def handle(self, command: protocol.Command) -> tuple[int, dict[str, Any]]:
        """Act on a verified, schema-checked command; (HTTP status, answer)."""
        name, args = command.name, command.args
        if name == "status":
            return self.answer(200, result=self.status())
        if name == "start":
            if self.state == "ready":
                return self.answer(200, result="already ready: nothing to do")
            await self.set_state("ready")
            return self.answer(200, result="started: accepting data commands")
        if name == "stop":
            if self.state == "unready":
                return self.answer(200, result="already unready: nothing to do")
            await self.set_state("unready")
            note = " (the running work is allowed to finish)" if self.busy() else ""
            return self.answer(200, result=f"stopped: refusing data commands{note}")
        if name == "terminate":
            asyncio.get_running_loop().call_soon(self.begin_termination)
            return 200, {"ok": True, "state": "terminated", "result": "terminating"}
        if self.state != "ready":
            return self.answer(409, error=f"{name!r} refused: the device is unready (send start)")
        if name == "ping":
            return self.answer(200, result=int(time.time()))
        if name == "calculate":
            task = asyncio.create_task(self.calculate(float(args["x"]), args["msg"]))
            self.calculations.add(task)
            task.add_done_callback(self.calculations.discard)
            return self.answer(200, result=f"calculating for {args['x']}s in the background")
        return self.start_run(args)

    def busy(self) -> bool:
        return self.job is not None or bool(self.calculations)

    def status(self) -> dict[str, Any]:
        job = self.job
        now = time.monotonic()
        return {
            "id": self.config.device_id,
            "type": self.config.device_type,
            "size": self.config.size,
            "job": None if job is None else job.summary(now),
            "unreported": sorted({job_id for job_id, _ in self.unreported}),
            # How long ago each unreported job ended (its latest run): the gateway keeps its
            # lease only so long.
            "unreported_seconds": self.unreported_seconds(now),
            "calculations": len(self.calculations),
        }

    def unreported_seconds(self, now: float) -> dict[str, float]:
        seconds: dict[str, float] = {}
        for (job_id, _), unreported in self.unreported.items():
            ago = round(now - unreported.ended, 3)
            seconds[job_id] = min(ago, seconds.get(job_id, ago))
        return seconds

    async def set_state(self, state: str) -> None:
        """Change state and tell the gateway, waiting briefly for it: once the operator sees
        the answer, the pool shows the new state (a slow gateway gets it in the background)."""
        self.state = state
        log.info("state %s", state)
        task = self.send_report({"report": "state", "state": state})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=2)

    async def calculate(self, seconds: float, msg: str) -> None:
        await asyncio.sleep(seconds)
        print(msg, flush=True)

    def start_run(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.job is not None:
            return self.answer(409, error=f"busy with job {self.job.job_id}")
        if args["kind"] == "qpu" and self.config.device_type != "qpu":
            return self.answer(409, error=f"this {self.config.device_type} device runs no qpu jobs")
        job = RunningJob(args["job_id"], args["fencing_token"], args["kind"])
        job.task = asyncio.create_task(self.run_job(job, args["input"]))
        self.job = job
        log.info("run job %s (attempt %s)", job.job_id, job.fencing_token)
        return self.answer(200, result={"job_id": job.job_id, "accepted": True})

    async def run_job(self, job: RunningJob, job_input: Any) -> None:
        started = time.monotonic()
        result: Any  # whatever the handler returned: checked by _unsendable_result
        try:
            with reporting(job.reporter):  # copied into the handler's thread by to_thread
                if job.kind == "qpu" or self.config.device_type == "qpu":
                    result = await run_mock_qpu(
                        job_input, self.config.size, self.config.qpu_seconds
                    )
                else:
                    from jobs.handlers import resolve_handler

                    result = await asyncio.to_thread(resolve_handler(job.kind), job_input)
            succeeded, error = True, _unsendable_result(result)
            if error:
                result, succeeded = None, False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job's failure, reported; the agent carries on
            result, succeeded, error = None, False, f"{type(exc).__name__}: {exc}"
        report = {
            "report": "job_finished",
            "job_id": job.job_id,
            "fencing_token": job.fencing_token,
            "succeeded": succeeded,
            "result": result,
            # The report's schema caps the error; a long traceback must not get it refused.
            "error": _short(error, 9000),
            "duration": round(time.monotonic() - started, 6),
            "state": self.state,
        }
        key = (job.job_id, job.fencing_token)
        self.unreported[key] = UnreportedResult(report)
        self.job = None
        log.info("job %s %s", job.job_id, "succeeded" if succeeded else f"failed: {error}")
        task = asyncio.create_task(self.resend_until_answered(key))
        self.report_tasks.add(task)
        task.add_done_callback(self.report_tasks.discard)

    # --- reports to the gateway ---

    def send_report(self, report: dict[str, Any]) -> asyncio.Task[bool]:
        task = asyncio.create_task(self.deliver(report))
        self.report_tasks.add(task)
        task.add_done_callback(self.report_tasks.discard)
        return task

    def next_delay(self, attempt: int) -> float:
        return backoff_delay(
            attempt - 1, self.config.report_backoff_seconds, self.config.report_backoff_max_seconds
        )

    async def post_report(
        self, report: dict[str, Any], attempt: int, retry_in: float | None
    ) -> ReportOutcome:
        """One signed POST of a report; logs one line with the outcome (and when the next
        try is, `retry_in`, None for none). Never raises (but for cancellation): whatever
        goes wrong is an attempt to make again."""
        then = "no more tries" if retry_in is None else f"next try in {retry_in:.1f}s"
        path = f"/api/devices/{self.config.device_id}/reports/"
        about = report["report"]
        if "job_id" in report:
            about += f" for job {report['job_id']} (token {report['fencing_token']})"
        try:
            assert self.session is not None
            body = protocol.encode(report)
            headers = protocol.sign(self.secret, "POST", path, body)
            async with self.session.post(
                self.config.gateway + path, data=body, headers=headers, timeout=_timeout(5)
            ) as response:
                status, text = response.status, await response.text()
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "report %s not delivered (attempt %d: %s); %s",
                about,
                attempt,
                _short(str(exc) or type(exc).__name__),
                then,
            )
            return "retry"
        except Exception:  # a bug here must not end the resending, nor the agent
            log.exception("report %s not delivered (attempt %d); %s", about, attempt, then)
            return "retry"
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {}
        answer = answer if isinstance(answer, dict) else {}
        outcome = report_outcome(status, answer)
        if outcome == "delivered":
            note = f": {answer['error']}" if answer.get("error") else ""
            log.info("report %s delivered (%s, attempt %d)%s", about, status, attempt, note)
        elif outcome == "refused":
            log.warning("report %s refused for good (%s: %s); dropped", about, status, _short(text))
        else:
            log.warning(
                "report %s not delivered (attempt %d: %s %s); %s",
                about,
                attempt,
                status,
                _short(text),
                then,
            )
        return outcome

    async def resend_until_answered(self, key: tuple[str, int]) -> None:
        """Send a finished job's report until the gateway accepts it or refuses it for
        good, then forget it. Other answers (5xx, no answer, a timeout) mean another try
        after a backoff; the gateway requeues a job it waited too long for, and its late
        report is then refused by its fencing token."""
        while (unreported := self.unreported.get(key)) is not None:
            unreported.attempts += 1
            delay = self.next_delay(unreported.attempts)
            outcome = await self.post_report(unreported.report, unreported.attempts, delay)
            if outcome != "retry":
                self.unreported.pop(key, None)
                return
            await asyncio.sleep(delay)

    async def deliver(self, report: dict[str, Any], deadline: float | None = None) -> bool:
        """POST a signed report, retried with backoff until answered for good or the
        deadline passes; True if it was accepted."""
        deadline = deadline or time.monotonic() + self.config.report_retry_seconds
        attempt = 0
        while True:
            attempt += 1
            backoff = self.next_delay(attempt)
            # None: the deadline comes before the next try, so this is the last one.
            delay = backoff if time.monotonic() + backoff <= deadline else None
            outcome = await self.post_report(report, attempt, delay)
            if outcome != "retry":
                if "job_id" in report:
                    self.unreported.pop((report["job_id"], report["fencing_token"]), None)
                return outcome == "delivered"
            if delay is None:
                return False
            await asyncio.sleep(delay)

    # --- registration and the life cycle ---

    async def register(self, deadline_seconds: float = 30.0) -> None:
        assert self.session is not None
        body = {
            "id": self.config.device_id,
            "type": self.config.device_type,
            "size": self.config.size,
            "url": self.config.url,
        }
        deadline = time.monotonic() + deadline_seconds
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.session.post(
                    self.config.gateway + "/api/devices/",
                    json=body,
                    headers={REGISTRATION_TOKEN_HEADER: self.config.token},
                    timeout=_timeout(10),
                ) as response:
                    answer = await response.json(content_type=None)
                    if response.status in (200, 201):
                        self.secret = answer["secret"]
                        log.info("registered with %s as %s", self.config.gateway, answer["id"])
                        return
                    raise SystemExit(f"registration refused ({response.status}): {answer}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"could not register with {self.config.gateway}: {exc}"
                    ) from exc
                if attempt == 1:
                    log.warning(
                        "could not register with %s yet (%s); retrying for %.0fs, refusing "
                        "commands until then",
                        self.config.gateway,
                        _short(str(exc) or type(exc).__name__),
                        deadline_seconds,
                    )
                await asyncio.sleep(0.5)

    async def deregister(self) -> None:
        assert self.session is not None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.session.delete(
                f"{self.config.gateway}/api/devices/{self.config.device_id}/",
                headers={REGISTRATION_TOKEN_HEADER: self.config.token},
                timeout=_timeout(5),
            ) as response:
                log.info("deregistered (%s)", response.status)

    def begin_termination(self) -> None:
        if not self.terminated.is_set():
            log.info("terminating")
            self.terminated.set()

    async def clean_up(self) -> None:
        """Stop at once: give the running job back, drop calculations, deregister."""
        job, self.job = self.job, None
        if job is not None and job.task is not None:
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
            returned = {
                "report": "job_returned",
                "job_id": job.job_id,
                "fencing_token": job.fencing_token,
                "reason": "device terminated while running it",
            }
            await self.deliver(returned, deadline=time.monotonic() + 3)
        for task in list(self.calculations):
            task.cancel()
        for task in list(self.report_tasks):
            task.cancel()
        # Finished jobs whose report is still in flight get a last short chance (if it
        # fails, the gateway requeues them: they lose their lease once we are gone).
        for unreported in list(self.unreported.values()):
            await self.deliver(unreported.report, deadline=time.monotonic() + 2)
        await self.deregister()

    def respond(self, request: web.Request, status: int, answer: dict[str, Any]) -> web.Response:
        """An answer signed with the secret, bound to the command's nonce: the gateway
        believes only answers from the holder of the device's secret (issue 17)."""
        body = protocol.encode(answer)
        command_nonce = request.headers.get(protocol.NONCE_HEADER, "")
        headers = (
            protocol.sign_answer(self.secret, command_nonce, status, body)
            if self.secret
            else {"Content-Type": "application/json"}
        )
        return web.Response(body=body, status=status, headers=headers)

    async def on_command(self, request: web.Request) -> web.Response:
        if not self.secret:
            # Until it has registered it has no key to check commands with: an empty one
            # would accept anyone's (issue 17).
            status, answer = self.answer(
                503, error="not registered with the gateway yet: commands are refused until then"
            )
            return self.respond(request, status, answer)
        limit = protocol.MAX_COMMAND_BYTES
        if (request.content_length or 0) > limit:
            status, answer = self.answer(413, error=f"message is over the limit of {limit} bytes")
            return self.respond(request, status, answer)
        try:
            body = await request.read()  # at most client_max_size, or 413
        except web.HTTPRequestEntityTooLarge:
            status, answer = self.answer(413, error=f"message is over the limit of {limit} bytes")
            return self.respond(request, status, answer)
        try:
            message = protocol.verify(
                self.secret,
                request.method,
                request.path,
                body,
                request.headers,
                self.nonces,
                max_age=self.config.max_age,
                max_bytes=protocol.MAX_COMMAND_BYTES,
            )
            command = protocol.parse_command(message)
        except protocol.ProtocolError as error:
            log.warning("refused a message: %s", error.message)
            status, answer = self.answer(error.status, error=error.message)
            return self.respond(request, status, answer)
        status, answer = await self.handle(command)
        return self.respond(request, status, answer)

    def application(self) -> web.Application:
        # The size limit is checked by `verify`; aiohttp's own limit sits just above it.
        app = web.Application(client_max_size=protocol.MAX_COMMAND_BYTES + 1024)
        app.router.add_post(COMMAND_PATH, self.on_command)
        return app

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_termination)
        runner = web.AppRunner(self.application(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        await site.start()
        self.session = aiohttp.ClientSession()
        try:
            await self.register()
            log.info(
                "device %s (%s, size %s) listening on %s; state unready",
                self.config.device_id,
                self.config.device_type,
                self.config.size,
                self.config.url,
            )
            await self.terminated.wait()
            await self.clean_up()
        finally:
            await self.session.close()
            await runner.cleanup()
        log.info("device %s exited", self.config.device_id)


def _unsendable_result(result: Any) -> str:
    """Why a result cannot travel in a report ("" if it can): the gateway would refuse
    the report as a whole, and the job would run again for nothing. NaN and Infinity
    are not JSON; a result over the limit would not fit in a report."""
    try:
        encoded = json.dumps(result, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            return "result not storable: it holds a NaN or infinite number (not JSON)"
        return f"result not storable: it is not JSON ({exc})"
    except (TypeError, RecursionError) as exc:
        return f"result not storable: it is not JSON ({type(exc).__name__}: {exc})"
    size = len(encoded.encode())
    if size > protocol.MAX_RESULT_BYTES:
        return (
            f"result not storable: it is {size} bytes, over the limit of "
            f"{protocol.MAX_RESULT_BYTES}"
        )
    return ""


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)
