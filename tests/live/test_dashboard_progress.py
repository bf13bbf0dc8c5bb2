"""The dashboard's running jobs show each job's latest progress."""

from __future__ import annotations

import pytest
from django.urls import reverse

from jobs.models import Job, User
from jobs.progress import Progress, save_progress
from jobs.queue import JobSpec, claim_next, submit_jobs

pytest_plugins = ["tests.support.dashboard_fixtures"]


@pytest.mark.django_db(transaction=True)
def test_the_running_jobs_panel_shows_progress_and_its_message(staff_client) -> None:
    owner = User.objects.create(username="gil")
    submit_jobs(owner, [JobSpec(kind="noop", input=n, device_type="cpu") for n in range(2)])
    reporting, silent = claim_next("cpu", "dev-a"), claim_next("cpu", "dev-b")
    assert reporting is not None and silent is not None
    key = (reporting.public_id, reporting.fencing_token, "dev-a")
    assert save_progress({key: Progress(0.42, "batch 4 <of> 10")}) == 1
    html = staff_client.get(reverse("admin:dashboard-panels")).content.decode()
    row = next(line for line in html.split("<tr>") if "dev-a" in line)
    assert '<progress max="1" value="0.42' in row and "42 %" in row
    assert "batch 4 &lt;of&gt; 10" in row  # escaped, as any user text
    quiet = next(line for line in html.split("<tr>") if "dev-b" in line)
    assert "<progress" not in quiet and Job.objects.get(pk=silent.id).progress is None
