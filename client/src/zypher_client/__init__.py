"""Python client of the Zypher fair-share gateway (`Client`) and the `zypher` command line.

from zypher_client import Client

with Client("http://127.0.0.1:8080", user="alice") as zypher:
    job = zypher.submit(5, kind="limited_f")
    print(zypher.wait(job.id, timeout=60).result)
"""

from __future__ import annotations

from zypher_client.client import DEFAULT_URL, Client
from zypher_client.errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    JobFailed,
    NotFound,
    PredictionFailed,
    RateLimited,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
    ZypherError,
)
from zypher_client.jobs import FINAL_STATUSES, Job

__all__ = [
    "DEFAULT_URL",
    "FINAL_STATUSES",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Job",
    "JobFailed",
    "NotFound",
    "PredictionFailed",
    "RateLimited",
    "ServerError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "ZypherError",
]
