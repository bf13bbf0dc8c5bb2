"""The API's JSON parser: DRF's, with a body nested too deeply to parse answered 400."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, parsers


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            # json.loads recurses once per nesting level: "[[[[...]]]]" would be a 500.
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
