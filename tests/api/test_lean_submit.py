"""The one-job submit's lean validation agrees with the serializer it stands in for.

`lean_submit_item` takes a plain one-job body without building DRF's fields; whatever
it takes must validate to exactly what `JobSubmitSerializer` gives, and whatever the
serializer refuses it must leave to the serializer (None), so every error stays phrased
where it always was.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.api.serializers import JobSubmitSerializer, lean_submit_item
from jobs.handlers import known_kinds

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
# Each key's values the serializer takes, and values around its edges.
valid_by_key: dict[str, st.SearchStrategy[Any]] = {
    "user_id": st.sampled_from(["alice", "bob.x@y+z-1", "é", "x" * 150]),
    "device_type": st.sampled_from(["cpu", "gpu-2", "a.b_c"]),
    "input": json_values.filter(lambda value: value is not None),
    "kind": st.sampled_from(known_kinds()),
    "priority": st.integers(min_value=-100, max_value=100),
}
edges_by_key: dict[str, st.SearchStrategy[Any]] = {
    "user_id": st.sampled_from([" alice", "alice\n", "alice ", "", "a b", "x" * 151]),
    "device_type": st.sampled_from(["", " cpu", "cpu\n", "x/y", "x" * 65]),
    "input": st.sampled_from([None, "\x00", {"a": "\x00"}, [[[[[[[[[[[[1]]]]]]]]]]]]]),
    "kind": st.sampled_from(["nope", "", " noop", "noop\n"]),
    "priority": st.sampled_from([101, -101, "5", 5.0, True, False, None, 2**70]),
    "callback_url": st.sampled_from(["http://example.com/hook", "ftp://x", ""]),
    "unknown": json_scalars,
}
valid_bodies = st.fixed_dictionaries(
    {"input": valid_by_key["input"]},
    optional={key: values for key, values in valid_by_key.items() if key != "input"},
)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with up to two keys replaced or added: an edge value or any value."""
    body = draw(valid_bodies)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        key = draw(st.sampled_from(sorted(edges_by_key)))
        body[key] = draw(edges_by_key[key] | json_scalars)
    if draw(st.booleans()) and "input" in body and draw(st.booleans()):
        del body["input"]
    return body


def serializer_answer(body: dict[str, Any]) -> dict[str, Any] | None:
    serializer = JobSubmitSerializer(data=body)
    return dict(serializer.validated_data) if serializer.is_valid() else None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(bodies())
def test_the_lean_validation_takes_only_what_the_serializer_takes_and_gives_the_same(
    body: dict[str, Any],
) -> None:
    lean = lean_submit_item(body)
    if lean is not None:
        assert lean == serializer_answer(body)
        assert list(lean) == list(serializer_answer(body) or {})  # the same order too


def test_a_plain_one_job_body_takes_the_lean_path() -> None:
    body = {"user_id": "alice", "kind": "noop", "input": {"x": [1, 2]}, "priority": 3}
    assert lean_submit_item(body) == serializer_answer(body)
    assert lean_submit_item({"input": 1}) == {"input": 1, "kind": "limited_f", "priority": 0}


def test_bodies_the_serializer_refuses_or_changes_are_left_to_it() -> None:
    refused: list[dict[str, Any]] = [
        {},
        {"input": None},
        {"input": 1, "user_id": 5},
        {"input": 1, "kind": "nope"},
        {"input": 1, "priority": 101},
        {"input": 1, "priority": True},
        {"input": 1, "device_type": ""},
        {"input": "\x00"},
        {"input": 1, "user_id": "alice\n"},  # the serializer trims it: "alice"
    ]
    for body in refused:
        assert lean_submit_item(body) is None, body
