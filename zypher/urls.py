"""Root URLs: the admin, the API schema and docs, and each app's routes."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.views.defaults import page_not_found, server_error
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from zypher.front import front_page

urlpatterns = [
    path("", front_page, name="front-page"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("jobs.urls")),
    path("", include("splines.urls")),
    path("", include("devices.urls")),
    path("", include("jobs.api.programs")),
    path("media/<path:path>", serve, {"document_root": settings.MEDIA_ROOT}),
]


def _is_api(request: HttpRequest) -> bool:
    # The API, the prediction contract and the QPU exercise's compat routes answer JSON.
    return request.path.startswith(("/api/", "/predict", "/devices", "/device", "/jobs", "/job"))


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"error": f"Not found: {request.path}"}, status=404)
    return page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"error": "Internal server error."}, status=500)
    return server_error(request)
