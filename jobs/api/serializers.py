"""Input validation and output shape of the jobs and users API."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.reverse import reverse
from rest_framework.settings import api_settings

from jobs.api.fields import (
    NonNullJSONField,
    StrictBooleanField,
    StrictCharField,
    StrictRegexField,
)
from jobs.handlers import known_kinds
from jobs.models import MAX_WEIGHT, MIN_WEIGHT, Job, User
from jobs.programs import CALLBACK_URL_PATTERN
from jobs.queue import JobSpec

USER_ID_PATTERN = r"^[\w.@+-]{1,150}$"
USER_ID_RULE = "user_id may hold 1 to 150 letters, digits and . @ + - _"
DEVICE_TYPE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
CALLBACK_URL_LENGTH = 2000  # Job.callback_url's max_length


class JobSubmitListSerializer(serializers.ListSerializer):
    """A bulk submit: the list's own limits, phrased for jobs (see `JobSubmitSerializer.bulk`)."""

    default_error_messages = {
        "empty": "The list of jobs is empty.",
        "max_length": "At most {max_length} jobs per request.",
    }


class JobSubmitSerializer(serializers.Serializer):
    user_id = StrictRegexField(
        USER_ID_PATTERN,
        required=False,
        help_text="Who the job is for (open mode, or a staff token acting for a user).",
        error_messages={"invalid": USER_ID_RULE},
    )
    input = NonNullJSONField(help_text="The job's input, any JSON value but null.")
    kind = StrictCharField(
        default="limited_f", max_length=64, help_text="Which handler runs it."
    )  # replaced by the known kinds at run time, see get_fields
    priority = serializers.IntegerField(
        default=0, min_value=-100, max_value=100, help_text="Orders the user's own jobs."
    )
    device_type = StrictRegexField(
        DEVICE_TYPE_PATTERN,
        required=False,
        help_text="The device pool to run on (default: the local devices' type).",
        error_messages={"invalid": "device_type may hold 1 to 64 letters, digits and . - _"},
    )
    callback_url = StrictRegexField(
        CALLBACK_URL_PATTERN,
        max_length=CALLBACK_URL_LENGTH,
        required=False,
        error_messages={"invalid": "callback_url must be an http(s) URL with a host."},
        help_text="Called once when the job ends: a POST of the job as GET shows it, retried "
        "with backoff. http(s), a host of ZYPHER_CALLBACK_ALLOWED_HOSTS; never link-local or "
        "cloud metadata addresses. A well-formed URL to a host that may not be called is a 403, "
        "as for programs.",
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        # The kinds are settings (ZYPHER_HANDLERS), read when the schema or a request asks:
        # the schema lists exactly the kinds a submit accepts.
        fields = super().get_fields()
        kinds = known_kinds()
        fields["kind"] = serializers.ChoiceField(
            choices=kinds,
            default="limited_f",
            help_text="Which handler runs it.",
            error_messages={
                "invalid_choice": f"Unknown kind {{input!r}}; valid kinds: {', '.join(kinds)}."
            },
        )
        return fields

    @classmethod
    def bulk(cls, data: Any) -> JobSubmitListSerializer:
        """A list submitted at once: not empty, at most ZYPHER_MAX_BULK_JOBS jobs."""
        return JobSubmitListSerializer(
            child=cls(), data=data, allow_empty=False, max_length=settings.ZYPHER_MAX_BULK_JOBS
        )

    def validate_input(self, value: Any) -> Any:
        check_storable_json(value)
        return value

    @staticmethod
    def spec_from(data: dict[str, Any]) -> JobSpec:
        """The queue's view of one validated item."""
        return JobSpec(
            kind=data["kind"],
            input=data["input"],
            device_type=data.get("device_type") or settings.ZYPHER_LOCAL_DEVICE_TYPE,
            priority=data["priority"],
        )


# What `lean_submit_item` takes on its own; any other key goes to the serializer.
_LEAN_KEYS = frozenset({"user_id", "input", "kind", "priority", "device_type"})
_USER_ID = re.compile(USER_ID_PATTERN)
_DEVICE_TYPE = re.compile(DEVICE_TYPE_PATTERN)


def lean_submit_item(data: dict[str, Any]) -> dict[str, Any] | None:
    """`JobSubmitSerializer(data=data).validated_data` for a plain one-job body, or None.

    DRF builds a serializer's fields per instance, a deep copy of each declared field:
    more Python than the rest of a submit's view (issue 16). This takes the common body
    (strings that need no trimming, an int priority in range, a known kind, no callback)
    and gives exactly what the serializer would; for anything else it answers None and
    the caller asks the serializer, so every error is phrased where it always was
    (tests/api/test_lean_submit.py holds the two to the same answers).
    """
    if not _LEAN_KEYS.issuperset(data):
        return None
    validated: dict[str, Any] = {}
    if "user_id" in data:
        if not _plain_match(data["user_id"], _USER_ID):
            return None
        validated["user_id"] = data["user_id"]
    value = data.get("input")
    if value is None:
        return None
    try:
        check_storable_json(value)
        # JSONField's own check: Python's parser reads 1e999 as inf, which it refuses.
        json.dumps(value, allow_nan=False)
    except (serializers.ValidationError, ValueError):
        return None
    kind = data.get("kind", "limited_f")  # the field's default, taken unchecked as DRF does
    if "kind" in data and (type(kind) is not str or kind not in known_kinds()):
        return None
    priority = data.get("priority", 0)
    if type(priority) is not int or not -100 <= priority <= 100:
        return None
    validated.update(input=value, kind=kind, priority=priority)
    if "device_type" in data:
        if not _plain_match(data["device_type"], _DEVICE_TYPE):
            return None
        validated["device_type"] = data["device_type"]
    return validated


def _plain_match(value: Any, pattern: re.Pattern[str]) -> bool:
    # CharField trims whitespace before the pattern is tried: leave that to it.
    return type(value) is str and value.strip() == value and pattern.match(value) is not None


def list_limit_error(errors: Any) -> str | None:
    """The message of an error about a list as a whole (empty, too long), else None."""
    if isinstance(errors, dict) and api_settings.NON_FIELD_ERRORS_KEY in errors:
        return str(errors[api_settings.NON_FIELD_ERRORS_KEY][0])
    return None


MAX_INPUT_DEPTH = 64


def check_storable_json(value: Any) -> None:
    """Refuse what a JSON column cannot hold the same way on every database.

    Deep nesting exhausts the stack when the value is encoded for PostgreSQL or rendered
    (a 500), and PostgreSQL's jsonb cannot store the character U+0000 (a DataError).
    Walks iteratively, so that the check itself cannot recurse too deeply.
    """
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > MAX_INPUT_DEPTH:
                raise serializers.ValidationError(
                    f"input is nested deeper than {MAX_INPUT_DEPTH} levels."
                )
            if isinstance(item, dict):
                pending.extend((key, depth) for key in item)
                pending.extend((child, depth + 1) for child in item.values())
            else:
                pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and "\x00" in item:
            raise serializers.ValidationError("input may not contain the character U+0000.")


_ID_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


class JobSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    url = serializers.SerializerMethodField()
    user_id = serializers.CharField(source="owner.username", read_only=True)
    callback_url = serializers.URLField(
        read_only=True, allow_null=True, help_text="Called when the job ends; null: no callback."
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "url",
            "user_id",
            "kind",
            "input",
            "device_type",
            "priority",
            "status",
            "result",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "duration",
            "device",
            "attempts",
            "progress",
            "progress_message",
            "callback_url",
            "callback_status",
        ]
        read_only_fields = fields

    def get_url(self, job: Job) -> str:
        # Reversed once per serializer (a list of 500 jobs shares one), not per job: the
        # URL differs only in the id, and a reverse with its absolute URI took ~70 us.
        template = getattr(self, "_url_template", None)
        if template is None:
            template = reverse(
                "job-detail", args=[_ID_PLACEHOLDER], request=self.context.get("request")
            ).rpartition(_ID_PLACEHOLDER)
            self._url_template = template
        return f"{template[0]}{job.public_id}{template[2]}"

    def to_representation(self, job: Job) -> dict[str, Any]:
        # Written out by hand: DRF building a ModelSerializer's fields costs about a
        # millisecond per request, as much as the submit's whole transaction. The
        # declared fields above still describe the shape for the OpenAPI schema, and
        # tests/api/test_submit_api.py checks both agree.
        return {
            "id": str(job.public_id),
            "url": self.get_url(job),
            "user_id": job.owner.username,
            "kind": job.kind,
            "input": job.input,
            "device_type": job.device_type,
            "priority": job.priority,
            "status": job.status,
            "result": job.result,
            "error": job.error,
            "created_at": _timestamp(job.created_at),
            "started_at": _timestamp(job.started_at),
            "finished_at": _timestamp(job.finished_at),
            "duration": job.duration,
            "device": job.device,
            "attempts": job.attempts,
            "progress": job.progress,
            "progress_message": job.progress_message,
            "callback_url": job.callback_url or None,
            "callback_status": job.callback_status,
        }


def _timestamp(value: datetime | None) -> str | None:
    """ISO 8601 as DRF writes it (UTC with a Z)."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class JobDetailSerializer(JobSerializer):
    queue_position = serializers.SerializerMethodField(
        help_text="While queued: about how many jobs the policy dispatches before this one."
    )

    wait_reason = serializers.SerializerMethodField(
        help_text="While queued: why no registered device of its pool can run it (null when "
        "one can)."
    )

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "queue_position", "wait_reason"]
        read_only_fields = fields

    def get_queue_position(self, job: Job) -> int | None:
        from jobs.queue import queue_position

        return queue_position(job)

    def get_wait_reason(self, job: Job) -> str | None:
        from jobs.queue import wait_reason

        return wait_reason(job)

    def to_representation(self, job: Job) -> dict[str, Any]:
        return {
            **super().to_representation(job),
            "queue_position": self.get_queue_position(job),
            "wait_reason": self.get_wait_reason(job),
        }


def weight_field(**kwargs: Any) -> serializers.FloatField:
    # min/max state the range in the schema; validate_weight also refuses NaN.
    message = f"weight must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g}."
    return serializers.FloatField(
        min_value=MIN_WEIGHT,
        max_value=MAX_WEIGHT,
        error_messages={"min_value": message, "max_value": message},
        **kwargs,
    )


class UserCreateSerializer(serializers.Serializer):
    """A new user; a name that is taken is the view's 409, not a malformed request."""

    user_id = StrictRegexField(USER_ID_PATTERN, error_messages={"invalid": USER_ID_RULE})
    weight = weight_field(default=1.0)
    password = StrictCharField(required=False, write_only=True, min_length=8)
    is_staff = StrictBooleanField(default=False)

    def validate_weight(self, value: float) -> float:
        return validate_weight(value)


class UserWeightSerializer(serializers.Serializer):
    """PATCH: the weight is the one field; an empty body changes nothing."""

    weight = weight_field(required=False)

    def validate_weight(self, value: float) -> float:
        return validate_weight(value)


def validate_weight(value: float) -> float:
    # `not MIN <= value <= MAX` also refuses NaN; the model's check constraint agrees.
    if not MIN_WEIGHT <= value <= MAX_WEIGHT:
        raise serializers.ValidationError(
            f"weight must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g} (got {value!r})."
        )
    return value


class UserSerializer(serializers.Serializer):
    user_id = serializers.CharField(source="username")
    weight = serializers.FloatField()
    is_active = serializers.BooleanField()
    is_staff = serializers.BooleanField()
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    device_seconds = serializers.FloatField(help_text="Device time received so far, in seconds.")


def user_summary(user: User) -> dict[str, Any]:
    from django.db.models import Sum

    totals = user.accounts.aggregate(
        queued=Sum("queued_count"), running=Sum("running_count"), served=Sum("served_seconds")
    )
    return {
        "username": user.username,
        "weight": user.weight,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "queued": totals["queued"] or 0,
        "running": totals["running"] or 0,
        "device_seconds": totals["served"] or 0.0,
    }
