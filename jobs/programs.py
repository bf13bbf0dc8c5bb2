"""Programs: jobs submitted together whose results go back to the user at a callback URL;
and the callbacks themselves, a program's or a single job's.

A program groups jobs of any kind; what its jobs are (the QPU exercise's circuits) is the
business of the app that submits them (`devices.qpu.programs`).

A program's priority is its jobs' priority: it orders them among the user's own work
(the core scheduler's semantics); between users the weighted fair share decides. When
every job of a program has ended, a dispatcher POSTs the program's results to its
`callback_url`, retried with exponential backoff up to ZYPHER_CALLBACK_MAX_ATTEMPTS and
recorded on the program (`delivered`, or `failed` with the reason). A job may name a
`callback_url` of its own (`submit_with_callbacks`): when it ends, the same dispatchers
POST it its representation (`GET /api/jobs/<id>/`) the same way, recorded on the job.
Delivery is at least once: an attempt is counted before its POST, and a dispatcher that
dies between the POST and recording it leaves the callback pending, to be sent again.

SSRF guard: a callback URL must be http(s) with a host in ZYPHER_CALLBACK_ALLOWED_HOSTS,
checked when the program is created and again before each delivery; redirects are not
followed. An entry is `host` (any port), `host:port` or `host:*` (any port the URL names
explicitly). The default is empty in production (no callbacks until an operator names the
receivers) and loopback with explicit ports in development; `*` allows any host. Whatever
the list says, link-local addresses (169.254.0.0/16, fe80::/10) and the cloud metadata
endpoints (169.254.169.254, fd00:ec2::254, metadata.google.internal) are refused, also when
a name resolves to them; at delivery the connection goes to the address that was checked,
so a name cannot resolve to one address for the check and another for the POST.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from jobs.models import FINAL_STATUSES, CallbackDelivery, Job, JobStatus, Program, User
from jobs.queue import JobSpec, NamedUser, submit_jobs

log = logging.getLogger("zypher.programs")

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


class CallbackNotAllowed(ValueError):
    pass


# Names of cloud metadata services; their addresses are refused below by value.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


# IPv6 prefixes whose last 32 bits are an IPv4 address a gateway may forward to: the
# NAT64 well-known prefix (RFC 6052) and the deprecated IPv4-compatible form (::a.b.c.d).
_EMBEDDING_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96"))


def _refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Link-local and metadata addresses are never a callback's receiver, nor an IPv6
    address that carries one (::ffff:169.254.169.254 is the same endpoint)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in prefix for prefix in _EMBEDDING_PREFIXES):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and _refused_address(embedded):
            return True
    return address.is_link_local or address in METADATA_ADDRESSES


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0 has a zone
    except ValueError:
        return None


def _host_allowed(host: str, port: int | None, allowed: list[str]) -> bool:
    """Whether (host, port as written in the URL) matches an allow-list entry."""
    for entry in allowed:
        if entry == "*":
            return True
        entry_host, entry_port = entry, ""
        if entry.startswith("["):  # [::1]:8000
            entry_host, _, rest = entry[1:].partition("]")
            entry_port = rest.removeprefix(":")
        elif entry.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
            entry_host, entry_port = entry.split(":")
        if entry_host != host:
            continue
        if entry_port == "" or (entry_port == "*" and port is not None):
            return True
        if entry_port.isdigit() and port == int(entry_port):
            return True
    return False


def resolve_callback_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, each refused if link-local or metadata."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise CallbackNotAllowed(f"callback host {host!r} does not resolve ({error})") from None
    addresses = []
    for info in infos:
        address = str(info[4][0])
        literal = _literal_address(address)
        if literal is not None and _refused_address(literal):
            raise CallbackNotAllowed(
                f"callback host {host!r} resolves to {address}, a link-local or "
                "cloud metadata address"
            )
        addresses.append(address)
    return addresses


# What `check_callback_url` reads as an http(s) URL with a host (a name or a bracketed
# IPv6 literal): the API's form check and its schema pattern; the host's allow-list is
# checked after (a 403).
CALLBACK_URL_PATTERN = (
    r"^https?://([A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?(/[!-~]*)?$"
)


def check_callback_url(url: str, resolve: bool = True) -> list[str]:
    """Raise CallbackNotAllowed unless `url` is http(s) to an allowed, harmless host.

    Returns the addresses the host resolves to (empty when `resolve` is off); a name
    that does not resolve is refused."""
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError:
        raise CallbackNotAllowed("callback_url must be an http(s) URL with a host") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CallbackNotAllowed("callback_url must be an http(s) URL with a host")
    host = parsed.hostname.lower().rstrip(".")
    literal = _literal_address(host)
    if host in METADATA_HOSTS or (literal is not None and _refused_address(literal)):
        raise CallbackNotAllowed(
            f"callback host {host!r} is a link-local or cloud metadata address"
        )
    allowed = settings.ZYPHER_CALLBACK_ALLOWED_HOSTS
    if not _host_allowed(host, port, allowed):
        raise CallbackNotAllowed(
            f"callback host {host!r}"
            + (f" port {port}" if port is not None else "")
            + " is not allowed (ZYPHER_CALLBACK_ALLOWED_HOSTS: "
            + (", ".join(allowed) or "empty, so no callbacks")
            + ")"
        )
    if not resolve:
        return []
    default_port = 443 if parsed.scheme == "https" else 80
    return resolve_callback_host(host, port or default_port)


def create_program(
    owner: User,
    specs: list[JobSpec],
    *,
    device_type: str,
    priority: int = 0,
    callback_url: str = "",
    idempotency_key: str | None = None,
) -> tuple[Program, list[Job], bool]:
    """Create a program and queue its jobs in one transaction, all or nothing.

    Returns the program, its jobs and whether they were created now (False: the
    idempotency key was used before and this is the program it created).
    """
    if callback_url:
        check_callback_url(callback_url)
    with transaction.atomic():
        program = Program.objects.create(
            owner=owner,
            priority=priority,
            device_type=device_type,
            callback_url=callback_url,
            callback_status=Program.Delivery.PENDING if callback_url else Program.Delivery.NONE,
        )
        created_jobs, created = submit_jobs(
            owner, specs, idempotency_key=idempotency_key, program=program
        )
        if not created:
            transaction.set_rollback(True)
    if not created:
        # The jobs the key found belong to the program the first request created.
        first_program = created_jobs[0].program
        assert first_program is not None
        program = first_program
    return program, created_jobs, created


def submit_with_callbacks(
    owner: User | NamedUser,
    specs: list[JobSpec],
    callback_urls: list[str],
    *,
    idempotency_key: str | None = None,
) -> tuple[list[Job], bool]:
    """`submit_jobs`, each job with its `callback_url` ("" for none), in one transaction:
    a job is never seen by a device without its callback. Each URL must have passed
    `check_callback_url` (the submit serializer checks it)."""
    if not any(callback_urls):
        return submit_jobs(owner, specs, idempotency_key=idempotency_key)
    with transaction.atomic():
        jobs, created = submit_jobs(owner, specs, idempotency_key=idempotency_key)
        if created:  # a repeated key's jobs keep the callbacks they were created with
            by_url: dict[str, list[Job]] = {}
            for job, url in zip(jobs, callback_urls, strict=True):
                if url:
                    by_url.setdefault(url, []).append(job)
            # Job rows in id order, after the accounts submit_jobs locked (the lock order).
            for url, named in sorted(by_url.items(), key=lambda item: item[1][0].pk):
                Job.objects.filter(pk__in=[job.pk for job in named]).update(
                    callback_url=url, callback_status=CallbackDelivery.PENDING
                )
                for job in named:
                    job.callback_url, job.callback_status = url, CallbackDelivery.PENDING
    return jobs, created


def program_state(counts: dict[str, int]) -> str:
    """`queued` (nothing started), `running`, or `finished` (every job ended)."""
    if counts.get(JobStatus.RUNNING, 0):
        return "running"
    queued = counts.get(JobStatus.QUEUED, 0)
    if not queued:
        return "finished"
    return "queued" if queued == sum(counts.values()) else "running"


def program_report(program: Program) -> dict[str, Any]:
    """The program's state and every job's result: what GET shows and the callback gets."""
    jobs = list(
        program.jobs.order_by("id").only(
            "public_id", "status", "result", "error", "size", "device", "attempts", "finished_at"
        )
    )
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return {
        "program_id": str(program.public_id),
        "state": program_state(counts),
        "priority": program.priority,
        "device_type": program.device_type,
        "counts": counts,
        "jobs": [
            {
                "id": str(job.public_id),
                "status": job.status,
                "size": job.size,
                "result": job.result,
                "error": job.error,
                "device": job.device,
                "attempts": job.attempts,
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            }
            for job in jobs
        ],
    }


# --- callback delivery (runs in the dispatchers) ---


def programs_due_for_callback(exclude: set[int]) -> list[tuple[int, int, str]]:
    """(id, attempts so far, url) of pending programs whose jobs have all ended."""
    unfinished = Job.objects.filter(program=OuterRef("pk"), status__in=UNFINISHED)
    return list(
        Program.objects.filter(callback_status=Program.Delivery.PENDING)
        .exclude(pk__in=exclude)
        .annotate(unfinished=Exists(unfinished))
        .filter(unfinished=False)
        .order_by("id")
        .values_list("id", "callback_attempts", "callback_url")[:50]
    )


def claim_callback_attempt(program_id: int, attempts: int) -> dict[str, Any] | None:
    """Take attempt `attempts + 1` (compare-and-set: one dispatcher per attempt) and return
    the payload to post, or None if another dispatcher took it."""
    taken = Program.objects.filter(
        pk=program_id, callback_status=Program.Delivery.PENDING, callback_attempts=attempts
    ).update(callback_attempts=attempts + 1)
    if not taken:
        return None
    return program_report(Program.objects.get(pk=program_id))


def record_callback(program_id: int, delivered: bool, error: str, final: bool) -> None:
    if delivered:
        Program.objects.filter(pk=program_id).update(
            callback_status=Program.Delivery.DELIVERED,
            delivered_at=timezone.now(),
            callback_error="",
        )
    else:
        Program.objects.filter(pk=program_id).update(
            callback_status=Program.Delivery.FAILED if final else Program.Delivery.PENDING,
            callback_error=error[:2000],
        )


def jobs_due_for_callback(exclude: set[int]) -> list[tuple[int, int, str]]:
    """(id, attempts so far, url) of ended jobs whose own callback is pending."""
    return list(
        Job.objects.filter(callback_status=CallbackDelivery.PENDING, status__in=FINAL_STATUSES)
        .exclude(pk__in=exclude)
        .order_by("id")
        .values_list("id", "callback_attempts", "callback_url")[:50]
    )


def claim_job_callback_attempt(job_id: int, attempts: int) -> dict[str, Any] | None:
    """As `claim_callback_attempt`, for a job: the payload is the job as GET shows it."""
    from jobs.api.serializers import JobDetailSerializer  # the API's shape, not the API's import

    taken = Job.objects.filter(
        pk=job_id, callback_status=CallbackDelivery.PENDING, callback_attempts=attempts
    ).update(callback_attempts=attempts + 1)
    if not taken:
        return None
    job = Job.objects.select_related("owner").get(pk=job_id)
    return dict(JobDetailSerializer(job).data)


def record_job_callback(job_id: int, delivered: bool, error: str, final: bool) -> None:
    if delivered:
        Job.objects.filter(pk=job_id).update(
            callback_status=CallbackDelivery.DELIVERED,
            callback_delivered_at=timezone.now(),
            callback_error="",
        )
    else:
        Job.objects.filter(pk=job_id).update(
            callback_status=CallbackDelivery.FAILED if final else CallbackDelivery.PENDING,
            callback_error=error[:2000],
        )


@dataclass(frozen=True)
class CallbackSource:
    """What has callbacks (programs, jobs): the three steps of delivering one."""

    name: str
    due: Callable[[set[int]], list[tuple[int, int, str]]]
    claim: Callable[[int, int], dict[str, Any] | None]
    record: Callable[[int, bool, str, bool], None]


CALLBACK_SOURCES = (
    CallbackSource("program", programs_due_for_callback, claim_callback_attempt, record_callback),
    CallbackSource("job", jobs_due_for_callback, claim_job_callback_attempt, record_job_callback),
)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned_address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.pinned_address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned_address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.pinned_address, self.port), self.timeout)
        # The certificate is checked against the URL's name, as without pinning.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post_callback(url: str, payload: dict[str, Any], timeout: float = 10.0) -> str:
    """POST the results; "" on a 2xx answer, else the reason it failed.

    Redirects are not followed (a redirect could lead past the allow-list)."""
    try:
        addresses = check_callback_url(url)
    except CallbackNotAllowed as error:
        return str(error)
    parsed = urlparse(url)
    host = parsed.hostname or ""
    https = parsed.scheme == "https"
    port = parsed.port or (443 if https else 80)
    target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "zypher-callback"}
    connection_class = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    failure = "no address to connect to"
    for address in addresses:  # as create_connection does: the first that accepts
        connection = connection_class(host, port, address, timeout)
        try:
            try:
                connection.connect()
            except OSError as exc:
                failure = f"{type(exc).__name__}: {exc}"
                continue
            try:  # once connected, never resent elsewhere: one POST per attempt
                connection.request("POST", target, body=body, headers=headers)
                status = connection.getresponse().status
            except (OSError, http.client.HTTPException) as exc:
                return f"{type(exc).__name__}: {exc}"
            return "" if 200 <= status < 300 else f"HTTP {status}"
        finally:
            connection.close()
    return failure


class CallbackCourier:
    """A dispatcher's delivery of callbacks (programs' and jobs'); it remembers when each
    one's next retry is."""

    def __init__(self) -> None:
        self.next_attempt: dict[tuple[str, int], float] = {}

    async def deliver_due(self, db: Callable[..., Awaitable[Any]]) -> None:
        for source in CALLBACK_SOURCES:
            await self._deliver(source, db)

    async def _deliver(self, source: CallbackSource, db: Callable[..., Awaitable[Any]]) -> None:
        now = time.monotonic()
        waiting = {
            pk for (name, pk), at in self.next_attempt.items() if name == source.name and at > now
        }
        for pk, attempts, url in await db(source.due, waiting):
            payload = await db(source.claim, pk, attempts)
            if payload is None:
                continue
            error = await asyncio.to_thread(post_callback, url, payload)
            final = bool(error) and attempts + 1 >= settings.ZYPHER_CALLBACK_MAX_ATTEMPTS
            await db(source.record, pk, not error, error, final)
            if error and not final:
                delay = settings.ZYPHER_CALLBACK_BACKOFF_SECONDS * 2**attempts
                self.next_attempt[source.name, pk] = time.monotonic() + delay
                log.warning(
                    "callback of %s %s failed (%s); retry in %.1fs", source.name, pk, error, delay
                )
            else:
                self.next_attempt.pop((source.name, pk), None)
                log.info(
                    "callback of %s %s %s",
                    source.name,
                    pk,
                    "delivered" if not error else f"failed for good: {error}",
                )
