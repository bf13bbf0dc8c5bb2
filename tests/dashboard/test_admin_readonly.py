"""The admin cannot corrupt the queue: queue state is read-only, and queued or running
jobs leave only through the queue's own functions (cancel, requeue), so the fair-share
counters keep equal to the jobs they count (issue 12, item 5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from django.db.models import Count
from django.test import Client
from django.urls import reverse

from devices.models import Device
from jobs.models import FairPool, FairShareAccount, Job, User
from jobs.queue import JobSpec, claim_next, finish_job, submit_jobs

pytestmark = pytest.mark.django_db


def counters_match_jobs() -> list[str]:
    """Every account's queued and running counts against its real jobs."""
    real: dict[tuple[int, str, str], int] = {
        (row["owner_id"], row["device_type"], row["status"]): row["n"]
        for row in Job.objects.values("owner_id", "device_type", "status").annotate(n=Count("id"))
    }
    problems = []
    for account in FairShareAccount.objects.select_related("pool"):
        for status, counted in (
            ("queued", account.queued_count),
            ("running", account.running_count),
        ):
            actual = real.get((account.user_id, account.pool.device_type, status), 0)
            if counted != actual:
                problems.append(f"{account}: {status}_count {counted}, jobs {actual}")
    return problems


@pytest.fixture
def queue() -> dict[str, Any]:
    alice = User.objects.create(username="alice")
    bob = User.objects.create(username="bob")
    jobs, _ = submit_jobs(alice, [JobSpec("sleep", {"tag": str(n)}) for n in range(3)])
    submit_jobs(bob, [JobSpec("sleep", {"tag": "bob"})])
    claim = claim_next("cpu", "dev-1")
    assert claim is not None
    done = claim_next("cpu", "dev-2")
    assert done is not None and finish_job(done, succeeded=True, duration=0.1, result={})
    by_status = {job.status: job for job in Job.objects.order_by("id")}
    assert set(by_status) == {"queued", "running", "succeeded"}
    assert counters_match_jobs() == []
    return {"alice": alice, "bob": bob, **by_status}


@pytest.fixture
def admin_client() -> Client:
    operator = User.objects.create_superuser("operator", password="admin-password")
    client = Client()
    client.force_login(operator)
    return client


def change_url(obj: Any) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


def delete_url(obj: Any) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_delete", args=[obj.pk])


def test_the_change_form_of_a_job_has_no_editable_queue_state(queue, admin_client) -> None:
    for job in (queue["queued"], queue["running"]):
        html = admin_client.get(change_url(job)).content.decode()
        for field in ("status", "attempts", "lease_expires_at", "charged_cost", "owner"):
            assert f'name="{field}"' not in html, (job.status, field)
        for field in ("device_type", "size", "device"):
            assert f'name="{field}"' not in html, (job.status, field)
    # A queued job's priority stays editable; nothing of a running one is.
    assert 'name="priority"' in admin_client.get(change_url(queue["queued"])).content.decode()
    assert 'name="priority"' not in admin_client.get(change_url(queue["running"])).content.decode()


def form_as_shown(client: Client, url: str) -> dict[str, str]:
    """What a browser would post back unchanged: every field of the change form."""
    form = client.get(url).context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = field.prepare_value(form[name].value())
        if isinstance(value, datetime):
            data[f"{name}_0"], data[f"{name}_1"] = f"{value:%Y-%m-%d}", f"{value:%H:%M:%S}"
        elif value is not None:
            data[name] = str(value)
    return data


def test_posting_a_changed_status_does_nothing_to_the_row(queue, admin_client) -> None:
    tampered = {
        "status": "succeeded",
        "attempts": "9",
        "owner": str(queue["bob"].pk),
        "device_type": "gpu",
        "size": "64",
        "charged_cost": "0",
    }
    for job in (queue["queued"], queue["running"]):
        before = Job.objects.filter(pk=job.pk).values().get()
        form = form_as_shown(admin_client, change_url(job))
        admin_client.post(change_url(job), {**form, **tampered})
        after = Job.objects.filter(pk=job.pk).values().get()
        assert after == before, job.status
    assert counters_match_jobs() == []


def test_a_queued_jobs_priority_is_saved_while_it_stays_queued(queue, admin_client) -> None:
    job = queue["queued"]
    admin_client.post(change_url(job), {"priority": "7", "status": "cancelled"})
    job.refresh_from_db()
    assert (job.priority, job.status) == (7, "queued")


def test_deleting_a_queued_or_running_job_is_refused(queue, admin_client) -> None:
    for job in (queue["queued"], queue["running"]):
        response = admin_client.post(delete_url(job), {"post": "yes"})
        assert response.status_code == 403
        assert Job.objects.filter(pk=job.pk, status=job.status).exists()
    # The bulk action too: nothing goes when a live job is among the chosen.
    chosen = [queue["queued"].pk, queue["running"].pk, queue["succeeded"].pk]
    admin_client.post(
        reverse("admin:jobs_job_changelist"),
        {"action": "delete_selected", "_selected_action": chosen, "post": "yes"},
    )
    assert Job.objects.filter(pk__in=chosen).count() == 3
    assert counters_match_jobs() == []


def test_an_ended_job_may_be_deleted(queue, admin_client) -> None:
    admin_client.post(delete_url(queue["succeeded"]), {"post": "yes"})
    assert not Job.objects.filter(pk=queue["succeeded"].pk).exists()
    assert counters_match_jobs() == []


def test_the_actions_cancel_queued_and_requeue_running_jobs_and_keep_the_counts(
    queue, admin_client
) -> None:
    changelist = reverse("admin:jobs_job_changelist")
    running = queue["running"]
    admin_client.post(changelist, {"action": "requeue_selected", "_selected_action": [running.pk]})
    running.refresh_from_db()
    assert running.status == "queued" and running.error == "requeued by operator operator"
    assert running.lease_expires_at is None and running.device == ""
    assert counters_match_jobs() == []

    queued = list(Job.objects.filter(status="queued").values_list("pk", flat=True))
    admin_client.post(changelist, {"action": "cancel_selected", "_selected_action": queued})
    assert not Job.objects.filter(status__in=["queued", "running"]).exists()
    assert set(Job.objects.filter(pk__in=queued).values_list("cancelled_by", flat=True)) == {
        "operator"
    }
    assert counters_match_jobs() == []
    # The requeued job ran again when claimed: the queue knew of it.
    assert FairShareAccount.objects.filter(queued_count__gt=0).count() == 0


def test_a_requeued_job_is_claimed_again(queue, admin_client) -> None:
    running = queue["running"]
    Job.objects.filter(status="queued").exclude(pk=running.pk).update(priority=-100)
    admin_client.post(
        reverse("admin:jobs_job_changelist"),
        {"action": "requeue_selected", "_selected_action": [running.pk]},
    )
    claims = [claim_next("cpu", f"dev-{n}") for n in range(3)]
    assert running.pk in {claim.id for claim in claims if claim is not None}
    assert counters_match_jobs() == []


def test_the_fair_share_bookkeeping_is_read_only(queue, admin_client) -> None:
    account = FairShareAccount.objects.get(user=queue["alice"])
    pool = FairPool.objects.get(device_type="cpu")
    before = (
        FairShareAccount.objects.filter(pk=account.pk).values().get(),
        FairPool.objects.filter(pk=pool.pk).values().get(),
    )
    html = admin_client.get(change_url(account)).content.decode()
    assert 'name="queued_count"' not in html and 'name="virtual_time"' not in html
    for obj in (account, pool):
        tampered = {"queued_count": "0", "running_count": "0", "virtual_time": "0"}
        assert admin_client.post(change_url(obj), tampered).status_code == 403
        assert admin_client.post(delete_url(obj), {"post": "yes"}).status_code == 403
    add = reverse("admin:jobs_fairshareaccount_add")
    assert admin_client.get(add).status_code == 403
    assert admin_client.get(reverse("admin:jobs_job_add")).status_code == 403
    after = (
        FairShareAccount.objects.filter(pk=account.pk).values().get(),
        FairPool.objects.filter(pk=pool.pk).values().get(),
    )
    assert after == before


def test_a_user_with_queued_or_running_jobs_cannot_be_deleted(queue, admin_client) -> None:
    alice = queue["alice"]
    assert Job.objects.filter(owner=alice, status__in=["queued", "running"]).exists()
    response = admin_client.post(delete_url(alice), {"post": "yes"})
    assert "remove the user from the queue first" in response.content.decode()
    assert User.objects.filter(pk=alice.pk).exists()
    # A user whose jobs all ended goes, with their accounts and jobs.
    carol = User.objects.create(username="carol")
    [job], _ = submit_jobs(carol, [JobSpec("sleep", {"tag": "carol"})])
    admin_client.post(
        reverse("admin:jobs_job_changelist"),
        {"action": "cancel_selected", "_selected_action": [job.pk]},
    )
    admin_client.post(delete_url(carol), {"post": "yes"})
    assert not User.objects.filter(pk=carol.pk).exists()
    assert counters_match_jobs() == []


def test_a_devices_state_job_and_size_are_read_only(queue, admin_client) -> None:
    device = Device.objects.create(
        name="qpu-x", device_type="qpu", size=4, state=Device.State.READY, url="http://old"
    )
    tampered = {"url": "http://new", "state": "unready", "size": "99", "device_type": "cpu"}
    admin_client.post(change_url(device), {**tampered, "fencing_token": "5"})
    device.refresh_from_db()
    assert device.url == "http://new"
    assert (device.state, device.size, device.device_type, device.fencing_token) == (
        "ready",
        4,
        "qpu",
        None,
    )
