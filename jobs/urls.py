from django.urls import path, re_path

from jobs.api import events, views
from jobs.monitoring import views as stats_views
from jobs.predict import views as predict_views

urlpatterns = [
    path("api/health/", views.HealthView.as_view(), name="health"),
    path("api/jobs/", views.JobListCreateView.as_view(), name="job-list"),
    path("api/jobs/<uuid:job_id>/", views.JobDetailView.as_view(), name="job-detail"),
    path("api/jobs/<uuid:job_id>/events", events.job_events, name="job-events"),
    path("api/jobs/<uuid:job_id>/cancel/", views.JobCancelView.as_view(), name="job-cancel"),
    path("api/users/", views.UserCreateView.as_view(), name="user-create"),
    path("api/users/<str:user_id>/", views.UserDetailView.as_view(), name="user-detail"),
    path("api/token/", views.TokenView.as_view(), name="api-token"),
    path("api/stats/", stats_views.StatsView.as_view(), name="stats"),
    path(
        "api/users/<str:user_id>/remove-from-queue/",
        stats_views.RemoveFromQueueView.as_view(),
        name="user-remove-from-queue",
    ),
    re_path(r"^metrics/?$", stats_views.prometheus_metrics, name="metrics"),
    # The published prediction contract: at the root, with or without a trailing slash.
    re_path(r"^predict/?$", predict_views.predict, name="predict"),
    re_path(
        r"^predict/(?P<prediction_id>[^/]+)/?$",
        predict_views.prediction_detail,
        name="prediction-detail",
    ),
]
