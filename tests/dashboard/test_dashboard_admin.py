"""The dashboard and the list views of the admin, rendered by the server."""

from __future__ import annotations

import re

from django.test import Client
from django.urls import reverse

from devices.models import Device
from jobs.models import Job, JobStatus

pytest_plugins = ["tests.support.dashboard_fixtures"]


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', html)
    assert match, f"#{element_id} not on the page"
    return match.group(1).strip()


def test_the_admin_index_links_to_the_dashboard(staff_client) -> None:
    index = staff_client.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse("admin:dashboard")}"' in index


def test_the_dashboard_shows_the_figures_and_draws_its_charts(known_queue, staff_client) -> None:
    response = staff_client.get(reverse("admin:dashboard"))
    assert response.status_code == 200
    html = response.content.decode()
    assert text_of(html, "queue-total") == "4"
    assert text_of(html, "running-total") == "1"
    # Jain's index of R/E, at the real clock (seconds after the fixture's M): about 0.67.
    assert 0.6 < float(text_of(html, "jain-index")) < 0.9
    assert text_of(html, "oldest-queued").endswith("s")
    assert html.count('<svg class="chart"') == 3
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html  # nothing is fetched from elsewhere
    for section in ("queue-panel", "users-panel", "devices-panel", "fairness-panel"):
        assert f'id="{section}"' in html
    # Every lag of the fixture is within its pool's bound: nobody is flagged, and the
    # page says what "entitled" means.
    assert 'class="flagged"' not in html
    assert "fluid fair schedule" in html and 'id="entitled-means"' in html
    assert reverse("admin:dashboard-panels") in html  # what the page refreshes from


def test_the_panels_are_served_alone_for_the_refresh(known_queue, staff_client) -> None:
    response = staff_client.get(reverse("admin:dashboard-panels"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert text_of(html, "queue-total") == "4"
    Job.objects.filter(pk=known_queue.bob_queued.pk).update(status=JobStatus.CANCELLED)
    html = staff_client.get(reverse("admin:dashboard-panels")).content.decode()
    assert text_of(html, "queue-total") == "3"


def test_the_dashboard_is_for_staff_only(known_queue) -> None:
    outsider = Client()
    outsider.force_login(known_queue.alice)
    for name in ("admin:dashboard", "admin:dashboard-panels", "admin:dashboard-remove-from-queue"):
        response = outsider.get(reverse(name))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_users_list_shows_weight_queued_and_device_time(known_queue, staff_client) -> None:
    html = staff_client.get(reverse("admin:jobs_user_changelist")).content.decode()
    row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*>carol</a>(?:(?!</tr>).)*</tr>", html, re.S)
    assert row, "carol's row"
    assert 'name="form-2-weight"' in html or 'name="form-0-weight"' in html  # inline editable
    cells = re.findall(r'<td class="field-(\w+)[^"]*">(.*?)</td>', row.group(0), re.S)
    values = {name: re.sub(r"<[^>]+>", "", value).strip() for name, value in cells}
    assert values["queued"] == "3" and values["running"] == "0"
    bob = re.search(r"<tr[^>]*>(?:(?!</tr>).)*>bob</a>(?:(?!</tr>).)*</tr>", html, re.S)
    assert bob is not None
    assert '<td class="field-device_seconds">80.0</td>' in bob.group(0)


def test_a_weight_changed_in_the_list_is_saved(known_queue, staff_client) -> None:
    changelist = reverse("admin:jobs_user_changelist")
    users = list(staff_client.get(changelist).context["cl"].result_list)
    data = {
        "form-TOTAL_FORMS": str(len(users)),
        "form-INITIAL_FORMS": str(len(users)),
        "_save": "Save",
    }
    for index, user in enumerate(users):
        data[f"form-{index}-id"] = str(user.pk)
        data[f"form-{index}-weight"] = "7" if user.username == "carol" else str(user.weight)
    response = staff_client.post(changelist, data)
    assert response.status_code == 302
    known_queue.carol.refresh_from_db()
    assert known_queue.carol.weight == 7.0


def listed_jobs(client: Client, query: str) -> list[Job]:
    response = client.get(reverse("admin:jobs_job_changelist") + query)
    assert response.status_code == 200, query
    return list(response.context["cl"].result_list)


def test_jobs_are_listed_newest_first_and_filter_by_each_column(known_queue, staff_client) -> None:
    everything = listed_jobs(staff_client, "")
    assert [job.pk for job in everything] == sorted((job.pk for job in everything), reverse=True)
    assert len(everything) == 14
    assert {job.status for job in listed_jobs(staff_client, "?status__exact=queued")} == {"queued"}
    assert len(listed_jobs(staff_client, "?kind=predict")) == 2
    assert len(listed_jobs(staff_client, "?pool=gpu")) == 2
    assert len(listed_jobs(staff_client, "?user=carol")) == 4
    assert len(listed_jobs(staff_client, "?device=d1")) == 5  # 3 now, dave's, the running one
    assert len(listed_jobs(staff_client, "?user=bob&status__exact=queued")) == 1


def test_the_filters_offer_pools_kinds_users_and_devices(known_queue, staff_client) -> None:
    html = staff_client.get(reverse("admin:jobs_job_changelist")).content.decode()
    for link in ("?pool=gpu", "?kind=predict", "?user=carol", "?device=d1"):
        assert link in html, link


def test_the_device_filter_offers_registered_devices_that_run_nothing(
    known_queue, staff_client
) -> None:
    """They come from the devices app through `device_states()`: jobs names no other app."""
    Device.objects.create(name="qpu-idle", device_type="qpu", state=Device.State.READY)
    html = staff_client.get(reverse("admin:jobs_job_changelist")).content.decode()
    assert "?device=qpu-idle" in html and "?device=d1" in html


def test_jobs_are_found_by_id_or_by_user(known_queue, staff_client) -> None:
    job = known_queue.running_job
    (found,) = listed_jobs(staff_client, f"?q={job.public_id}")
    assert found.pk == job.pk
    assert len(listed_jobs(staff_client, "?q=carol")) == 4
    assert listed_jobs(staff_client, "?q=no-such-user") == []


def test_the_cancel_action_cancels_only_queued_jobs(known_queue, staff_client) -> None:
    chosen = [known_queue.bob_queued.pk, known_queue.running_job.pk]
    staff_client.post(
        reverse("admin:jobs_job_changelist"),
        {"action": "cancel_selected", "_selected_action": chosen},
    )
    known_queue.bob_queued.refresh_from_db()
    known_queue.running_job.refresh_from_db()
    assert known_queue.bob_queued.status == JobStatus.CANCELLED
    assert known_queue.bob_queued.cancelled_by == "operator"
    assert known_queue.running_job.status == JobStatus.RUNNING


def test_each_part_of_the_panels_is_served_alone(known_queue, staff_client) -> None:
    url = reverse("admin:dashboard-panels")
    live = staff_client.get(url, {"part": "live"}).content.decode()
    hour = staff_client.get(url, {"part": "hour"}).content.decode()
    assert text_of(live, "queue-total") == "4" and text_of(live, "oldest-queued").endswith("s")
    assert 'id="jain-index"' not in live and 'id="fairness-panel"' not in live
    assert 0.6 < float(text_of(hour, "jain-index")) < 0.9
    assert 'id="queue-total"' not in hour and 'id="fairness-panel"' in hour
    assert hour.count('<svg class="chart"') == 3
    page = staff_client.get(reverse("admin:dashboard")).content.decode()
    assert f'data-url="{url}?part=live"' in page and f'data-url="{url}?part=hour"' in page


def test_an_unknown_part_of_the_panels_is_a_400(known_queue, staff_client) -> None:
    response = staff_client.get(reverse("admin:dashboard-panels"), {"part": "history"})
    assert response.status_code == 400
    assert response.content.decode() == "Unknown part; valid: live, hour."
