"""The schedule and settings documents through the API: PUT replaces the whole document (a partial
one is refused rather than resetting the rest), PATCH merges (RFC 7396), both honour If-Match, and
the schedule shows each entry's next fire times."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.integration.gateway_support import Gateway

pytestmark = pytest.mark.integration

API = "/api/admin/backup"


async def test_a_partial_put_is_refused_and_leaves_every_section_as_it_was(gateway: Gateway) -> None:
    _, before = await gateway.call("GET", f"{API}/settings")

    status, body = await gateway.call("PUT", f"{API}/settings", {"retention": before["document"]["retention"]})

    assert status == 400, body
    assert body["error"]["code"] == "incomplete_document"
    assert "exclude" in body["error"]["message"]
    assert "PATCH" in body["error"]["message"]
    _, after = await gateway.call("GET", f"{API}/settings")
    assert after == before
    assert after["document"]["exclude"]  # the seeded patterns are still there


async def test_a_patch_changes_only_the_keys_it_names(gateway: Gateway) -> None:
    _, before = await gateway.call("GET", f"{API}/settings")

    status, patched = await gateway.call(
        "PATCH", f"{API}/settings", {"retention": {"keep_daily": 14, "max_age_days": 90}, "compression": {"level": 1}}
    )

    assert status == 200, patched
    expected = before["document"]
    expected["retention"] |= {"keep_daily": 14, "max_age_days": 90}
    expected["compression"]["level"] = 1
    assert patched["document"] == expected
    assert patched["revision"] == before["revision"] + 1
    status, reset = await gateway.call("PATCH", f"{API}/settings", {"retention": {"max_age_days": None}})
    assert status == 200, reset
    assert reset["document"]["retention"]["max_age_days"] is None  # null resets a key to its default


async def test_a_patch_that_makes_the_document_invalid_is_refused_naming_the_field(gateway: Gateway) -> None:
    _, before = await gateway.call("GET", f"{API}/settings")

    status, body = await gateway.call("PATCH", f"{API}/settings", {"retention": {"keep_last": 0}})

    assert status == 400, body
    assert [detail["field"] for detail in body["error"]["details"]] == ["retention.keep_last"]
    _, after = await gateway.call("GET", f"{API}/settings")
    assert after == before


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_if_match_with_a_stale_revision_answers_412_and_with_the_current_one_succeeds(
    gateway: Gateway, method: str
) -> None:
    response = await gateway.client.get(f"{API}/schedule", headers=gateway.auth())
    current = await response.json()
    assert response.headers["ETag"] == f'"{current["revision"]}"'
    body = current["document"] if method == "PUT" else {"timezone": "Europe/Paris"}
    stale = {**gateway.auth(), "If-Match": f'"{current["revision"] - 1 or 99}"'}

    status, refused = await gateway.call(method, f"{API}/schedule", body, headers=stale)
    assert status == 412, refused
    assert refused["error"]["code"] == "precondition_failed"
    assert f"revision {current['revision']}" in refused["error"]["message"]

    fresh = {**gateway.auth(), "If-Match": response.headers["ETag"]}
    status, saved = await gateway.call(method, f"{API}/schedule", body, headers=fresh)
    assert status == 200, saved
    assert saved["revision"] == current["revision"] + 1
    status, again = await gateway.call(method, f"{API}/schedule", body, headers=fresh)
    assert status == 412, again  # the same revision cannot be changed twice


async def test_a_malformed_if_match_is_refused_with_400(gateway: Gateway) -> None:
    headers = {**gateway.auth(), "If-Match": "yesterday"}

    status, body = await gateway.call("PATCH", f"{API}/settings", {"compression": {"level": 2}}, headers=headers)

    assert status == 400, body
    assert "If-Match" in body["error"]["message"]


async def test_the_schedule_shows_each_enabled_entrys_next_fire_times(gateway: Gateway) -> None:
    entries = [
        {"name": "nightly", "type": "full", "cron": "30 2 * * *"},
        {"name": "off", "type": "database", "cron": "* * * * *", "enabled": False},
    ]
    status, saved = await gateway.call("PUT", f"{API}/schedule", {"timezone": "Europe/Paris", "schedules": entries})
    assert status == 200, saved

    times = saved["next_fire_times"]

    assert set(times) == {"nightly"}
    fired = [datetime.fromisoformat(text) for text in times["nightly"]]
    assert len(fired) == 3
    assert {(later - earlier).total_seconds() for earlier, later in itertools.pairwise(fired)} <= {
        23 * 3600.0,
        24 * 3600.0,
        25 * 3600.0,
    }
    paris = {f"{moment.astimezone(ZoneInfo('Europe/Paris')):%H:%M}" for moment in fired}
    assert paris <= {"02:30", "03:00"}  # 03:00 only on the night the clocks skip 02:30
