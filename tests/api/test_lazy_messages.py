"""Django's messages, built only when a request touches them (jobs.api.middleware).

The storage (a cookie signer and the fallback's cookie and session stores) is built on
first use; a request that reads or adds no message stores nothing, and one that does
gets Django's behaviour: an added message survives to the next request and is shown once.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib import messages
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.utils.functional import empty

from jobs.api.middleware import MessageMiddleware


def through_middleware(
    view: Callable[[HttpRequest], HttpResponse], cookies: dict[str, str] | None = None
) -> tuple[HttpRequest, HttpResponse]:
    request = RequestFactory().get("/admin/")
    request.COOKIES.update(cookies or {})
    SessionMiddleware(lambda r: HttpResponse()).process_request(request)
    response = MessageMiddleware(view)(request)
    assert isinstance(response, HttpResponse)
    return request, response


def test_a_request_that_touches_no_message_builds_no_storage_and_stores_nothing() -> None:
    request, response = through_middleware(lambda r: HttpResponse("ok"))
    assert request._messages._wrapped is empty  # type: ignore[attr-defined]
    assert "messages" not in response.cookies


@pytest.mark.django_db
def test_an_added_message_is_stored_then_shown_once() -> None:
    def add(request: HttpRequest) -> HttpResponse:
        messages.success(request, "Cancelled 3 queued job(s).")
        return HttpResponse()

    _, response = through_middleware(add)
    cookie = response.cookies["messages"].value
    assert cookie

    shown: list[str] = []

    def show(request: HttpRequest) -> HttpResponse:
        shown.extend(str(message) for message in messages.get_messages(request))
        return HttpResponse()

    _, response = through_middleware(show, {"messages": cookie})
    assert shown == ["Cancelled 3 queued job(s)."]
    # Read once: the cookie is cleared, so the next page does not show it again.
    assert response.cookies["messages"].value == ""
