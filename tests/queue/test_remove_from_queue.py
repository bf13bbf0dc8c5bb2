"""Removing a user from the queue: over the API, as an admin action, from the dashboard.

Their queued jobs are cancelled (recorded with the operator's name), other users' jobs
are untouched, running jobs stop only when asked, and a deactivated user's next submit
is refused with a 403 that says why.
"""

from __future__ import annotations

from django.urls import reverse
from rest_framework.test import APIClient

from jobs.models import FairShareAccount, Job, JobStatus, User
from tests.support.api_helpers import client_with_token, submit

pytest_plugins = ["tests.support.dashboard_fixtures"]


def remove_url(user_id: str) -> str:
    return f"/api/users/{user_id}/remove-from-queue/"


def statuses(user: User) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Job.objects.filter(owner=user).values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def queued_counter(user: User) -> int:
    return sum(FairShareAccount.objects.filter(user=user).values_list("queued_count", flat=True))


def test_staff_remove_a_user_and_only_their_queued_jobs_are_cancelled(known_queue) -> None:
    bob_before = statuses(known_queue.bob)
    alice_before = statuses(known_queue.alice)
    response = client_with_token(known_queue.staff).post(remove_url("carol"), {}, format="json")
    assert response.status_code == 200
    assert response.json() == {"cancelled": 3}
    assert statuses(known_queue.carol) == {"cancelled": 4}  # 3 now, 1 by herself before
    assert queued_counter(known_queue.carol) == 0
    cancelled = Job.objects.filter(pk__in=[job.pk for job in known_queue.carol_queued])
    assert set(cancelled.values_list("cancelled_by", flat=True)) == {"operator"}
    assert all(job.finished_at is not None for job in cancelled)
    assert statuses(known_queue.bob) == bob_before
    assert statuses(known_queue.alice) == alice_before
    known_queue.carol.refresh_from_db()
    assert known_queue.carol.is_active  # not asked to deactivate


def test_running_jobs_stop_only_when_asked(known_queue) -> None:
    staff = client_with_token(known_queue.staff)
    assert staff.post(remove_url("alice"), {}, format="json").json() == {"cancelled": 0}
    known_queue.running_job.refresh_from_db()
    assert known_queue.running_job.status == JobStatus.RUNNING

    response = staff.post(remove_url("alice"), {"stop_running": True}, format="json")
    assert response.json() == {"cancelled": 1}
    known_queue.running_job.refresh_from_db()
    assert known_queue.running_job.status == JobStatus.CANCELLED
    assert known_queue.running_job.cancelled_by == "operator"


def test_a_deactivated_user_cannot_submit_again(known_queue, settings) -> None:
    settings.ZYPHER_OPEN_MODE = False
    staff = client_with_token(known_queue.staff)
    response = staff.post(remove_url("bob"), {"deactivate": True}, format="json")
    assert response.json() == {"cancelled": 1}
    known_queue.bob.refresh_from_db()
    assert not known_queue.bob.is_active
    # The token of a deactivated user no longer authenticates (DRF), and in open mode
    # naming the user is refused by name: either way a 401/403 with the reason.
    refused = submit(client_with_token(known_queue.bob), {"input": 1})
    assert refused.status_code in (401, 403)
    settings.ZYPHER_OPEN_MODE = True
    refused = submit(APIClient(), {"user_id": "bob", "input": 1})
    assert refused.status_code == 403
    assert refused.json() == {"error": "User 'bob' is deactivated and cannot submit jobs."}
    assert statuses(known_queue.bob).get("queued", 0) == 0


def test_only_staff_may_remove_and_unknown_users_are_404(known_queue) -> None:
    response = client_with_token(known_queue.alice).post(remove_url("carol"), {}, format="json")
    assert response.status_code == 403
    assert APIClient().post(remove_url("carol"), {}, format="json").status_code in (401, 403)
    assert statuses(known_queue.carol).get("queued") == 3
    missing = client_with_token(known_queue.staff).post(remove_url("nobody"), {}, format="json")
    assert missing.status_code == 404
    assert "nobody" in missing.json()["error"]


def test_bad_options_are_named(known_queue) -> None:
    response = client_with_token(known_queue.staff).post(
        remove_url("carol"), {"deactivate": "perhaps"}, format="json"
    )
    assert response.status_code == 400
    assert "deactivate" in response.json()
    assert statuses(known_queue.carol).get("queued") == 3


def test_the_admin_action_goes_through_the_confirmation_page(known_queue, staff_client) -> None:
    changelist = reverse("admin:jobs_user_changelist")
    response = staff_client.post(
        changelist,
        {"action": "remove_from_queue", "_selected_action": [known_queue.carol.pk]},
    )
    assert response.status_code == 302
    confirm_url = response["Location"]
    assert confirm_url.startswith(reverse("admin:dashboard-remove-from-queue"))
    page = staff_client.get(confirm_url)
    assert page.status_code == 200
    assert b"carol" in page.content and b"Yes, remove from the queue" in page.content
    assert statuses(known_queue.carol).get("queued") == 3  # nothing happens before confirming

    done = staff_client.post(
        confirm_url,
        {"users": [known_queue.carol.pk], "deactivate": "on", "next": changelist},
    )
    assert done.status_code == 302 and done["Location"] == changelist
    assert statuses(known_queue.carol) == {"cancelled": 4}
    known_queue.carol.refresh_from_db()
    assert not known_queue.carol.is_active
    assert statuses(known_queue.bob).get("queued") == 1
    message = staff_client.get(changelist).content.decode()
    assert "Removed carol from the queue: 3 job(s) cancelled; deactivated." in message


def test_the_dashboard_button_removes_one_user(known_queue, staff_client) -> None:
    dashboard = staff_client.get(reverse("admin:dashboard")).content.decode()
    button = f"{reverse('admin:dashboard-remove-from-queue')}?users={known_queue.bob.pk}"
    assert button in dashboard
    done = staff_client.post(
        reverse("admin:dashboard-remove-from-queue"), {"users": [known_queue.bob.pk]}
    )
    assert done["Location"] == reverse("admin:dashboard")
    assert statuses(known_queue.bob).get("queued", 0) == 0
    known_queue.bob.refresh_from_db()
    assert known_queue.bob.is_active
    assert statuses(known_queue.carol).get("queued") == 3


def test_the_confirmation_page_ignores_a_foreign_next_url(known_queue, staff_client) -> None:
    done = staff_client.post(
        reverse("admin:dashboard-remove-from-queue"),
        {"users": [known_queue.bob.pk], "next": "https://elsewhere.example/"},
    )
    assert done["Location"] == reverse("admin:dashboard")
