"""Paging `GET /api/jobs/`: by an opaque cursor (the default), or by `offset` (kept for
existing clients).

A cursor page reads `limit + 1` rows by keyset (`id < position`, newest first, the
`job_owner_newest` / `job_status_newest` indexes) and counts nothing, so every page costs
the same however long the listing is, and jobs submitted while a client pages only ever
appear on the first page (no job is shown twice or skipped). An `offset` page is DRF's
LimitOffsetPagination: it counts every matching row and walks past `offset` of them, so
it grows with the listing; it stays for the clients written against it.

The cursor is the position's job key under a keyed permutation (a 4-round Feistel network
over 64 bits, keyed from SECRET_KEY), written as 16 hex digits: the integer key that
orders the queue is never shown, and since every 16-hex-digit string decodes to some
position, a made-up cursor is just another place to start (what a client may see is
filtered before the position is applied).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from rest_framework import exceptions
from rest_framework.pagination import BasePagination, LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

MAX_LIST_LIMIT = 1000
CURSOR_PATTERN = "^[0-9a-f]{16}$"
_MAX_KEY = 2**63 - 1  # a signed 64-bit column: larger positions mean "from the newest"
_ROUNDS = 4


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """`?limit=&offset=` with `limit` at most MAX_LIST_LIMIT (stated in the schema): one
    page never reads an unbounded number of rows. A `limit` that is not a whole number
    from 1 to MAX_LIST_LIMIT is a 400 (DRF would quietly use the default or the cap)."""

    max_limit = MAX_LIST_LIMIT

    def get_limit(self, request: Request) -> int | None:
        value = request.query_params.get(self.limit_query_param)
        if value is None:
            return super().get_limit(request)
        if not re.fullmatch(r"[0-9]{1,7}", value) or not 1 <= int(value) <= MAX_LIST_LIMIT:
            raise exceptions.ValidationError(
                {self.limit_query_param: [f"A whole number from 1 to {MAX_LIST_LIMIT}."]}
            )
        return int(value)

    def get_offset(self, request: Request) -> int:
        value = request.query_params.get(self.offset_query_param)
        if value is None:
            return 0
        if not re.fullmatch(r"[0-9]{1,12}", value):  # DRF would read `null` as 0
            raise exceptions.ValidationError({self.offset_query_param: ["A whole number from 0."]})
        return int(value)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT}
                parameter["description"] = (
                    f"Results per page: at most {MAX_LIST_LIMIT} (default {self.default_limit})."
                )
            elif parameter["name"] == self.offset_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 0}
                parameter["description"] = (
                    "Legacy paging: skip this many jobs; the answer then also carries `count` "
                    "and `previous`. Costs a count of every matching job; prefer `cursor`. "
                    "Ignored with `cursor`."
                )
        return parameters


def _round_key() -> bytes:
    return hmac.new(
        settings.SECRET_KEY.encode(), b"zypher.jobs.list-cursor", hashlib.sha256
    ).digest()


def _round(key: bytes, number: int, half: int) -> int:
    digest = hmac.new(key, bytes([number]) + half.to_bytes(4, "big"), hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big")


def encode_cursor(position: int) -> str:
    """The opaque cursor of a job key (a permutation of 64-bit values)."""
    key = _round_key()
    left, right = position >> 32, position & 0xFFFFFFFF
    for number in range(_ROUNDS):
        left, right = right, left ^ _round(key, number, right)
    return f"{(left << 32) | right:016x}"


def decode_cursor(cursor: str) -> int:
    """The job key a cursor stands for; a 400 naming `cursor` unless it is 16 hex digits."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise exceptions.ValidationError(
            {"cursor": ["An opaque cursor: 16 hex digits, as given in a page's `next` link."]}
        )
    key = _round_key()
    value = int(cursor, 16)
    left, right = value >> 32, value & 0xFFFFFFFF
    for number in reversed(range(_ROUNDS)):
        left, right = right ^ _round(key, number, left), left
    return min((left << 32) | right, _MAX_KEY)


class JobListPagination(BasePagination):
    """Newest first by cursor (`?cursor=`, `next` in the body, no count); with `?offset=`
    and no cursor, the legacy limit/offset page. Expects a queryset ordered by `-id`."""

    cursor_query_param = "cursor"

    def __init__(self) -> None:
        self.legacy = BoundedLimitOffsetPagination()
        self.offset_mode = False
        self.next_link: str | None = None

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: Any = None
    ) -> list[Any] | None:
        cursor = request.query_params.get(self.cursor_query_param)
        if cursor is None and self.legacy.offset_query_param in request.query_params:
            self.offset_mode = True
            return self.legacy.paginate_queryset(queryset, request, view)
        limit = self.legacy.get_limit(request) or self.legacy.default_limit or MAX_LIST_LIMIT
        if cursor is not None:
            queryset = queryset.filter(id__lt=decode_cursor(cursor))
        rows = list(queryset[: limit + 1])
        page = rows[:limit]
        self.next_link = None
        if len(rows) > limit:
            url = remove_query_param(request.build_absolute_uri(), self.legacy.offset_query_param)
            self.next_link = replace_query_param(
                url, self.cursor_query_param, encode_cursor(page[-1].id)
            )
        return page

    def get_paginated_response(self, data: Any) -> Response:
        if self.offset_mode:
            return self.legacy.get_paginated_response(data)
        return Response({"next": self.next_link, "results": data})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "nullable": True, "format": "uri"}
        return {
            "type": "object",
            "required": ["next", "results"],
            "properties": {
                "next": {**link, "description": "The next page (a `cursor` link), or null."},
                "count": {
                    "type": "integer",
                    "description": "All matching jobs: only on `offset` pages.",
                },
                "previous": {**link, "description": "Only on `offset` pages."},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            *self.legacy.get_schema_operation_parameters(view),
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": (
                    "Where the page starts: the opaque value of the previous page's `next` "
                    "link. Pages are stable while jobs are submitted."
                ),
                "schema": {"type": "string", "pattern": CURSOR_PATTERN},
            },
        ]
