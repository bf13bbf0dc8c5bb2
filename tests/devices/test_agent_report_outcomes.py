"""What an agent makes of the gateway's answer to a report, and how long it waits before
the next try: resent until accepted or refused for good, with capped, jittered backoff."""

from __future__ import annotations

import pytest

from devices.agent import backoff_delay, report_outcome

pytestmark = pytest.mark.one_pass


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (200, "", "delivered"),
        (409, "result refused: the claim was lost (stale fencing token)", "refused"),
        (409, "this device does not hold that job", "refused"),
        (404, "Device 'qpu-1' not found.", "refused"),
        (401, "bad signature", "refused"),
        (400, "malformed report: duration: 'x' is not of type 'number'", "refused"),
        (413, "message of 2000000 bytes is over the limit of 1048576", "refused"),
        (401, "stale message: timestamp is 45s off (window 30s)", "retry"),
        (401, "replayed message: nonce already used", "retry"),
        (500, "Internal server error.", "retry"),
        (502, "", "retry"),
        (503, "", "retry"),
        (429, "", "retry"),
    ],
)
def test_the_answer_to_a_report_decides_whether_it_is_sent_again(status, error, outcome):
    assert report_outcome(status, {"ok": status < 300, "error": error}) == outcome


def test_backoff_doubles_up_to_the_cap_with_jitter():
    for attempt, ceiling in [(0, 0.2), (1, 0.4), (2, 0.8), (3, 1.6), (6, 10.0), (500, 10.0)]:
        delays = [backoff_delay(attempt, 0.2, 10.0) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), (attempt, delays[:5])
        assert len(set(delays)) > 1  # jittered: agents cut off together spread out
