"""The dashboard for machines: `GET /api/stats/`, `GET /metrics`, and removing a user from
the queue over the API. Thin views over `jobs.monitoring.stats`, `jobs.monitoring.metrics` and `jobs.queue`."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api.access import ReadsDashboard, RemovesFromQueue
from jobs.api.fields import StrictBooleanField
from jobs.api.parsers import JSONParser
from jobs.models import User
from jobs.monitoring import metrics, stats
from jobs.queue import remove_user_from_queue


class StatsView(APIView):
    """The dashboard's figures as JSON (`jobs.view_dashboard`): queue depth, who holds each device,
    throughput, service time, fair shares over the last hour."""

    permission_classes = [ReadsDashboard]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "part",
                str,
                enum=list(stats.STATS_PARTS),
                description=(
                    "Only one part: `live` (the queue, who waits, who holds each device: "
                    "cheap) or `hour` (throughput, service time, fairness, idle gaps over "
                    "the last hour: most of the cost). Both when absent."
                ),
            )
        ],
        responses={200: dict},
    )
    def get(self, request: Request) -> Response:
        part = request.query_params.get("part")
        if part is not None and part not in stats.STATS_PARTS:
            raise exceptions.ValidationError(
                {"part": [f"Unknown part {part!r}; valid: {', '.join(stats.STATS_PARTS)}."]}
            )
        return Response(stats.dashboard_stats(part=part))


class RemoveFromQueueSerializer(serializers.Serializer):
    deactivate = StrictBooleanField(
        default=False, help_text="Also deactivate the user: new submissions get 403."
    )
    stop_running = StrictBooleanField(
        default=False, help_text="Also stop the user's jobs running now."
    )


class RemoveFromQueueView(APIView):
    """Cancel every queued job of a user (`jobs.remove_from_queue`), optionally
    deactivating the user (a superuser: a superuser only) and stopping their running jobs.
    Answers `{"cancelled": n}`."""

    permission_classes = [RemovesFromQueue]
    parser_classes = [JSONParser]

    @extend_schema(
        request=RemoveFromQueueSerializer,
        responses={200: inline_serializer("Removed", {"cancelled": serializers.IntegerField()})},
    )
    def post(self, request: Request, user_id: str) -> Response:
        serializer = RemoveFromQueueSerializer(data=request.data or {})
        serializer.is_valid(raise_exception=True)
        user = User.objects.filter(username=user_id).first()
        if user is None:
            raise exceptions.NotFound(f"User {user_id!r} not found.")
        options: dict[str, Any] = serializer.validated_data
        cancelled = remove_user_from_queue(user, removed_by=request.user.get_username(), **options)
        return Response({"cancelled": cancelled})


@require_GET
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format, read from the database at scrape time (`jobs.monitoring.metrics`)."""
    if not metrics.scrape_allowed(request.headers.get("Authorization", "")):
        response = JsonResponse(
            {"error": "Send the metrics token (ZYPHER_METRICS_TOKEN) as Authorization: Bearer."},
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics.exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
