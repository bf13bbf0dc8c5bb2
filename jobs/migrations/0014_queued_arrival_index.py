"""The dashboard's fairness window (issue 13): each user's first queued arrival per pool
(the backlog's part of the fluid schedule) and the queued jobs that arrived before an
instant (the exact job counts) are read from this partial index alone, not from the
heap of every queued job."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0013_job_callback")]

    operations = [
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                fields=["device_type", "owner", "created_at"],
                condition=models.Q(status="queued"),
                name="job_queued_arrival",
            ),
        ),
    ]
