"""Django's deploy checks, seen through our middleware subclasses.

Django finds its security, CSRF, clickjacking and session middleware by their dotted
paths in MIDDLEWARE. Ours are subclasses (jobs.api.middleware: hooks that run on the
event loop), so Django's checks would report them missing (security.W001 to W003,
silenced in settings) and skip every check that depends on them (HSTS, SSL redirect,
nosniff, X-Frame-Options, secure cookies...). Here those checks run again with each of
our classes named by the Django class it extends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.checks.security import base, csrf, sessions
from django.test.utils import override_settings
from django.utils.module_loading import import_string

# The checks that look for a middleware by path: Django's own run of them sees nothing.
MIDDLEWARE_CHECKS: tuple[Callable[..., Sequence[checks.CheckMessage]], ...] = (
    base.check_security_middleware,
    base.check_xframe_options_middleware,
    base.check_sts,
    base.check_sts_include_subdomains,
    base.check_sts_preload,
    base.check_content_type_nosniff,
    base.check_ssl_redirect,
    base.check_xframe_deny,
    base.check_referrer_policy,
    base.check_cross_origin_opener_policy,
    csrf.check_csrf_middleware,
    csrf.check_csrf_cookie_secure,
    sessions.check_session_cookie_secure,
    sessions.check_session_cookie_httponly,
)
# Silenced in settings (Django's path test misses our subclasses): reported here under
# our own id when they really apply.
PATH_TEST_IDS = {"security.W001", "security.W002", "security.W003"}


def as_django_path(path: str) -> str:
    """The dotted path of the Django class a middleware extends (or its own path)."""
    for cls in import_string(path).__mro__:
        if cls.__module__.startswith("django."):
            return f"{cls.__module__}.{cls.__qualname__}"
    return path


@checks.register(checks.Tags.security, deploy=True)
def check_security_through_subclasses(
    app_configs: Sequence[Any] | None, **kwargs: Any
) -> list[checks.CheckMessage]:
    found: list[checks.CheckMessage] = []
    with override_settings(MIDDLEWARE=[as_django_path(path) for path in settings.MIDDLEWARE]):
        for check in MIDDLEWARE_CHECKS:
            found.extend(check(app_configs))
    for message in found:
        if message.id in PATH_TEST_IDS:
            message.id = f"zypher.{message.id}"
    return found
