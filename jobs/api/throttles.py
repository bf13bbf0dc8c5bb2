"""Submit rate limits: DRF throttles on the routes that queue jobs, off unless configured.

Two scopes, their rates in `REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]` (from
`ZYPHER_SUBMIT_RATE_USER` and `ZYPHER_SUBMIT_RATE_ADDRESS`, e.g. `100/min`; empty: off):

* `submit_user`: submits per token user (a request without a token counts by address,
  DRF's `UserRateThrottle`; open mode's named `user_id` is not an identity to trust);
* `submit_address`: submits per client address, whoever sends them (DRF's
  `REMOTE_ADDR`, or `X-Forwarded-For` if `NUM_PROXIES` says a proxy sets it).

The counts live in Django's default cache: with the default per-process cache each web
worker counts on its own, so a shared cache (CACHES) makes the rate exact across workers.
A throttled submit is a 429 with `Retry-After` and `{"error": "…"}` (jobs.api.errors).
Only POST counts: the same views also list and read.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle, UserRateThrottle
from rest_framework.views import APIView

SETTING_OF_SCOPE = {
    "submit_user": "ZYPHER_SUBMIT_RATE_USER",
    "submit_address": "ZYPHER_SUBMIT_RATE_ADDRESS",
}


class _SubmitThrottle(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        # Read when a request comes (DRF's class attribute is frozen at import).
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope or "")
        return str(rate) if rate else None

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method != "POST":
            return True
        return super().allow_request(request, view)

    def throttle_failure(self) -> bool:
        # Name the limit that was hit; DRF appends "Expected available in N seconds."
        assert self.scope is not None
        raise exceptions.Throttled(
            self.wait(),
            detail=f"Too many submits: at most {self.rate} per "
            f"{'user' if self.scope == 'submit_user' else 'client address'} "
            f"({SETTING_OF_SCOPE[self.scope]}).",
        )


class SubmitsPerUser(_SubmitThrottle, UserRateThrottle):
    scope = "submit_user"


class SubmitsPerAddress(_SubmitThrottle):
    scope = "submit_address"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


# What a submit view lists as `throttle_classes`.
SUBMIT_THROTTLES: list[type[BaseThrottle]] = [SubmitsPerUser, SubmitsPerAddress]


def check_submit_throttles(request: Request) -> None:
    """The same limits for a view outside DRF's dispatch (`/predict`): raises Throttled."""
    view = APIView()  # the throttles read nothing from it
    for throttle_class in SUBMIT_THROTTLES:
        throttle_class().allow_request(request, view)
