from django.urls import path

from devices import views
from devices.qpu import compat, programs

urlpatterns = [
    path("api/devices/", views.DeviceListCreateView.as_view(), name="device-list"),
    path("api/devices/<str:device_id>/", views.DeviceDetailView.as_view(), name="device-detail"),
    path(
        "api/devices/<str:device_id>/commands/",
        views.DeviceCommandView.as_view(),
        name="device-commands",
    ),
    path(
        "api/devices/<str:device_id>/reports/",
        views.DeviceReportView.as_view(),
        name="device-reports",
    ),
    *programs.urlpatterns,
    *compat.urlpatterns,
]
