"""`GET /api/programs/<id>/`: a program's state, every job's result, the callback's delivery.

Programs are submitted by the app that knows what their jobs are (`POST /api/programs/`
lives with the QPU exercise in `devices.qpu.programs`); reading one is the queue's business.
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api.access import JOB_READERS, reader_of
from jobs.models import Program
from jobs.programs import program_report


def program_body(program: Program) -> dict[str, Any]:
    return {
        **program_report(program),
        "user_id": program.owner.username,
        "created_at": program.created_at,
        "callback_url": program.callback_url,
        "callback": {
            "status": program.callback_status,
            "attempts": program.callback_attempts,
            "error": program.callback_error,
            "delivered_at": program.delivered_at,
        },
    }


class ProgramDetailView(APIView):
    """A program's state and every job's result (owner, staff; open mode: anyone with the id)."""

    permission_classes = JOB_READERS

    @extend_schema(responses={200: dict})
    def get(self, request: Request, program_id: str) -> Response:
        programs = Program.objects.select_related("owner").visible_to(reader_of(request))
        program = programs.filter(public_id=program_id).first()
        if program is None:
            raise exceptions.NotFound(f"Program {program_id} not found.")
        return Response(program_body(program))


urlpatterns = [
    path("api/programs/<uuid:program_id>/", ProgramDetailView.as_view(), name="program-detail"),
]
