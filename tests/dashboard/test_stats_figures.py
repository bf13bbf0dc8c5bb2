"""The dashboard's figures against a queue whose every number is known (see KnownQueue)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.models import FairShareAccount, Job, JobStatus
from jobs.monitoring import stats

pytest_plugins = ["tests.support.dashboard_fixtures"]


def test_queue_depth_counts_queued_jobs_in_all_per_pool_and_per_priority(known_queue) -> None:
    assert stats.queue_depth() == {
        "total": 4,
        "by_pool": [
            {"pool": "cpu", "queued": 3, "running": 1},
            {"pool": "gpu", "queued": 1, "running": 0},
        ],
        "by_priority": [
            {"priority": 5, "queued": 1},
            {"priority": 0, "queued": 2},
            {"priority": -1, "queued": 1},
        ],
    }


def test_top_users_by_queued_jobs_with_the_age_of_their_oldest(known_queue) -> None:
    rows = stats.queued_by_user(now=known_queue.now)
    assert [(r["user"], r["queued"], r["running"]) for r in rows] == [
        ("carol", 3, 0),
        ("bob", 1, 0),
    ]
    assert [r["oldest_queued_age_seconds"] for r in rows] == [120.0, 30.0]
    assert rows[0]["user_pk"] == known_queue.carol.pk and rows[1]["weight"] == 3.0
    assert stats.oldest_queued_age(known_queue.now) == 120.0


def test_running_jobs_say_which_user_holds_which_device_since_when(known_queue) -> None:
    (running,) = stats.running_jobs(known_queue.now)
    assert running["device"] == "d1" and running["pool"] == "cpu"
    assert running["user"] == "alice" and running["kind"] == "limited_f"
    assert running["job"] == str(known_queue.running_job.public_id)
    assert running["running_seconds"] == 5.0


def test_throughput_counts_jobs_ended_on_a_device_per_minute(known_queue) -> None:
    figures = stats.throughput(known_queue.now)
    # 2 ended in the last minute, 4 in five, all 7 in fifteen and sixty (cancelled: no).
    assert figures["per_minute"] == {"1": 2.0, "5": 0.8, "15": 7 / 15, "60": 7 / 60}
    assert figures["jobs_per_minute_now"] == 2.0
    # Device seconds of the last five minutes (30 + 10 + 20 + 10) over 300 s.
    assert figures["busy_devices"] == pytest.approx(70 / 300)


def test_the_last_hour_chart_has_one_bar_per_minute(known_queue) -> None:
    last_hour = stats.throughput(known_queue.now)["last_hour"]
    assert len(last_hour) == 60
    assert last_hour[-1]["minute"] == known_queue.now.isoformat()
    nonzero = {
        index: (m["succeeded"], m["failed"])
        for index, m in enumerate(last_hour)
        if m["succeeded"] or m["failed"]
    }
    # Minute M-10 (index 49): jobs 1, 2 and the failed 3; M-5: 4 and 5; M-1: 6 and 7.
    assert nonzero == {49: (2, 1), 54: (2, 0), 58: (2, 0)}
    assert last_hour[49]["minute"] == (known_queue.now - timedelta(minutes=10)).isoformat()


def test_service_time_mean_and_nearest_rank_95th_percentile_per_kind(known_queue) -> None:
    assert stats.service_time(known_queue.now) == [
        # limited_f: 10, 10, 10, 20, 20 (the 100 s job ended two hours ago)
        {"kind": "limited_f", "count": 5, "mean_seconds": 14.0, "p95_seconds": 20.0},
        {"kind": "predict", "count": 2, "mean_seconds": 20.0, "p95_seconds": 30.0},
    ]


def test_shares_measure_each_user_against_the_fluid_fair_schedule_per_pool(known_queue) -> None:
    rows = stats.shares(known_queue.now)
    by_key = {(row["pool"], row["user"]): row for row in rows}
    # cpu: carol waits from -120 while bob runs [-30, -10] (weights 3:1) and alice runs
    # [-5, 0] (1:1): entitled 20/4 + 5/2 = 7.5 s, received nothing. Dave ended 2 h ago.
    assert [row["user"] for row in rows if row["pool"] == "cpu"] == ["carol", "alice", "bob"]
    carol = by_key["cpu", "carol"]
    assert (carol["entitled_seconds"], carol["received_seconds"]) == (
        pytest.approx(7.5, abs=1e-3),
        0.0,
    )
    assert carol["lag_seconds"] == pytest.approx(7.5, abs=1e-3)
    # alice alone on d1 [-600, -590] except 0.3 s shared with bob (1:3), 0.995 s beside
    # bob's run on d2, alone [-270, -260], and half of [-5, 0]: 9.775 + 0.249 + 10 + 2.5.
    assert by_key["cpu", "alice"]["entitled_seconds"] == pytest.approx(22.524, abs=1e-3)
    assert by_key["cpu", "alice"]["received_seconds"] == pytest.approx(25.0, abs=1e-3)
    assert by_key["cpu", "bob"]["received_seconds"] == pytest.approx(80.0, abs=1e-3)
    # Received and entitled are two accounts of the same device time: lags sum to zero.
    assert sum(row["lag_seconds"] for row in rows if row["pool"] == "cpu") == pytest.approx(
        0.0, abs=1e-3
    )
    # gpu: bob waits with no device busy: nothing is owed to him; alice ran alone.
    assert by_key["gpu", "bob"]["entitled_seconds"] == 0.0
    assert by_key["gpu", "alice"]["lag_seconds"] == pytest.approx(0.0, abs=1e-3)
    # Every lag is within the bound (2 x the 30 s longest job + 1 s): nobody is flagged.
    assert not any(row["flagged"] for row in rows)
    assert carol["oldest_queued_age_seconds"] == 120.0
    assert by_key["cpu", "alice"]["oldest_queued_age_seconds"] is None
    assert (by_key["cpu", "alice"]["queued"], by_key["cpu", "alice"]["running"]) == (0, 1)


def test_jains_index_of_received_over_entitled(known_queue) -> None:
    rows = stats.shares(known_queue.now)
    # Over the users entitled to more than 1 s: carol 0, alice 25/22.524, bob 80/74.976,
    # alice on gpu 1.
    ratios = [0.0, 25 / 22.5237, 80 / 74.9763, 1.0]
    expected = sum(ratios) ** 2 / (4 * sum(x * x for x in ratios))
    assert stats.jain_index(rows) == pytest.approx(expected, abs=1e-3)
    equal: list[stats.UserShare] = [
        {**row, "received_seconds": row["entitled_seconds"]} for row in rows
    ]
    assert stats.jain_index(equal) == pytest.approx(1.0)
    assert stats.jain_index([]) is None


def test_idle_gap_histogram_from_consecutive_jobs_on_each_device(known_queue) -> None:
    gaps = stats.idle_gaps(known_queue.now)
    assert gaps["edges"] == [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]
    # d1: 0.7 s, 0.02 s; d2: 0.005 s, 229.995 s; g1 has one job; the running job has
    # not ended; dave's job ended before the window, so job 1 has no predecessor.
    assert gaps["counts"] == [1, 1, 0, 0, 1, 0, 0, 1]
    assert gaps["total"] == 4
    # SQLite subtracts julianday() values: exact to about 0.1 ms, plenty for a histogram.
    assert gaps["mean_seconds"] == pytest.approx((0.005 + 0.02 + 0.7 + 229.995) / 4, abs=1e-3)


def test_a_quiet_window_has_no_shares_and_no_index(known_queue) -> None:
    later = known_queue.now + timedelta(hours=3)
    Job.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).update(
        status=JobStatus.CANCELLED
    )
    FairShareAccount.objects.update(queued_count=0, running_count=0)
    figures = stats.dashboard_stats(now=later)
    assert figures["shares"] == []
    assert figures["fairness"]["jain_index"] is None
    assert figures["fairness"]["idle_gap"]["total"] == 0
    assert figures["throughput"]["per_minute"]["60"] == 0
    assert figures["service_time"] == []
    assert figures["queue_depth"]["total"] == 0


def test_devices_of_the_devices_app_are_listed_with_their_state(known_queue) -> None:
    from devices.models import Device

    Device.objects.create(
        name="d1", device_type="cpu", state="busy", current_job=known_queue.running_job
    )
    Device.objects.create(name="d2", device_type="cpu", state="ready")
    states = stats.device_states()
    assert [(d["device"], d["state"], d["job"]) for d in states] == [
        ("d1", "busy", str(known_queue.running_job.public_id)),
        ("d2", "ready", None),
    ]


def test_without_an_app_providing_devices_the_figures_list_none(known_queue, monkeypatch) -> None:
    from devices.models import Device

    Device.objects.create(name="d1", device_type="cpu", state="ready")
    monkeypatch.setattr(stats, "_device_states_provider", None)
    assert stats.device_states() == []
    assert stats.dashboard_stats()["devices"] == []
