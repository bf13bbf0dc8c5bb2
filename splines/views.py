"""HTTP edges of the splines app: the render and fit APIs and the page.

Each view validates through its serializer and calls one function (`render_spline`,
`fit_tck`); nothing here knows how curves are drawn.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.generic import TemplateView
from django.views.static import serve
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser, FormParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api.parsers import JSONParser

from .drawing import DEFAULT_COLOR
from .handlers import OUTPUT_SUBDIRECTORY, media_root
from .images import ImageInputError
from .parsers import LeanMultiPartParser
from .render import RenderedImage, render_spline
from .serializers import (
    FitRequestSerializer,
    FitResponseSerializer,
    PayloadTooLarge,
    RenderRequestSerializer,
    lean_render_request,
    spline_error,
)
from .tck import SplineInputError, fit_tck


class JsonWhateverTheClientAccepts(BaseContentNegotiation):
    """Errors are JSON even when the client asked for `image/*`: no 406 for an image client."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        content_type = request.content_type.split(";")[0].strip()
        return next((p for p in parsers if p.media_type == content_type), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        first = next(iter(renderers))
        return first, first.media_type


def rendered_response(rendered: RenderedImage) -> HttpResponse:
    response = HttpResponse(rendered.data, content_type=rendered.content_type)
    response["Content-Disposition"] = f'inline; filename="spline.{rendered.extension}"'
    response["X-Spline-Line-Width"] = f"{rendered.line_width:g}"
    if rendered.outside:
        response["X-Spline-Outside-Curves"] = ",".join(str(i) for i in rendered.outside)
    if rendered.warnings:
        response["X-Spline-Warning"] = " ".join(rendered.warnings)
    response["Access-Control-Expose-Headers"] = (
        "X-Spline-Line-Width, X-Spline-Outside-Curves, X-Spline-Warning"
    )
    return response


def render_or_raise(**kwargs: Any) -> RenderedImage:
    """`render_spline`, with its errors turned into API errors (400 naming a field, or 413)."""
    try:
        return render_spline(**kwargs)
    except ImageInputError as error:
        if error.status == 413:
            raise PayloadTooLarge(error.message) from None
        raise serializers.ValidationError({"image": [error.message]}) from None
    except SplineInputError as error:
        raise spline_error(error) from None


class RenderView(APIView):
    """Draw a B-spline on an image; answers the image, in the input's format by default."""

    # The lean parser first: DRF picks the first parser whose media type matches.
    parser_classes = [LeanMultiPartParser, FormParser, JSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonWhateverTheClientAccepts

    @extend_schema(
        request={
            "multipart/form-data": RenderRequestSerializer,
            "application/json": RenderRequestSerializer,
        },
        responses={
            (200, "image/*"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="The image with the curve drawn. X-Spline-Warning says when a "
                "curve lies entirely outside the image.",
            ),
            400: OpenApiResponse(description="{field: [message]} naming what to fix."),
            413: OpenApiResponse(description="Image over the upload or pixel limit."),
        },
        summary="Draw a B-spline (t, c, k) on an image",
    )
    def post(self, request: Request) -> HttpResponse:
        job = lean_render_request(request.data)
        if job is None:
            serializer = RenderRequestSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            job = serializer.to_request()
        rendered = render_or_raise(
            image_data=job.image,
            curve_set=job.curve_set,
            options=job.options,
            requested_format=job.format,
        )
        return rendered_response(rendered)


class FitView(APIView):
    """Fit a tck through clicked points with `splprep`, for drawing with the render API."""

    parser_classes = [JSONParser, FormParser, MultiPartParser]

    @extend_schema(
        # Documented as JSON: in a form, points is JSON text, which a schema cannot say.
        request={"application/json": FitRequestSerializer},
        responses={200: FitResponseSerializer},
        summary="Fit a B-spline through points",
    )
    def post(self, request: Request) -> Response:
        serializer = FitRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            fitted = fit_tck(**serializer.validated_data)
        except SplineInputError as error:
            raise spline_error(error) from None
        return Response(FitResponseSerializer(fitted).data)


def job_output(request: HttpRequest, path: str) -> HttpResponseBase:
    """An image stored by a `spline` job (its name is a random UUID)."""
    return serve(request, path, document_root=str(media_root() / OUTPUT_SUBDIRECTORY))


@method_decorator(ensure_csrf_cookie, name="dispatch")
class SplinePage(TemplateView):
    """Upload an image, give or click a curve, see and download the result."""

    template_name = "splines/page.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["default_color"] = DEFAULT_COLOR
        return context
