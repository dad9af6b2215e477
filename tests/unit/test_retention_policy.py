"""The retention policy: which backups restic-style rules keep, why, and why the others may be deleted.

Like restic's snapshot policy tests, one fixed, irregular list of backups is run through a table of
policies, each row stating exactly which backups are kept and for which reasons.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from backup_common.domain.documents import RetentionPolicy
from backup_common.domain.events import BackupType
from backup_common.domain.retention import Candidate, RetentionPlan, apply_policy

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
NOT_KEPT = "not kept by any rule"
ARCHIVE_NOT_KEPT = "archive not kept by keep_monthly or keep_yearly"

# UTC, oldest first; each doubles as the backup's id. Irregular on purpose: two backups on the
# oldest day (so the "oldest" rule has something to add), several per day, gaps of weeks and
# months, 2024-12-30/31 in ISO week 2025-W01, 2027-01-01..03 in 2026-W53, and New Year's Eves.
STAMPS = (
    "2024-03-01T09:00",
    "2024-03-01T10:00",
    "2024-06-15T10:00",
    "2024-06-15T18:00",
    "2024-11-02T09:00",
    "2024-12-28T08:00",
    "2024-12-30T08:00",
    "2024-12-31T22:00",
    "2025-01-01T01:00",
    "2025-01-05T12:00",
    "2025-01-06T12:00",
    "2025-02-14T09:00",
    "2025-03-30T23:30",
    "2025-05-01T06:00",
    "2025-05-01T12:00",
    "2025-05-01T18:00",
    "2025-07-20T09:00",
    "2025-09-01T09:00",
    "2025-10-31T23:00",
    "2025-11-01T00:30",
    "2025-12-29T07:00",
    "2025-12-31T23:59",
    "2026-01-01T00:00",
    "2026-01-04T10:00",
    "2026-02-02T10:00",
    "2026-04-15T10:00",
    "2026-06-30T10:00",
    "2026-08-10T10:00",
    "2026-10-05T10:00",
    "2026-11-30T10:00",
    "2026-12-01T10:00",
    "2026-12-20T10:00",
    "2026-12-24T10:00",
    "2026-12-27T23:00",
    "2026-12-28T01:00",
    "2026-12-31T12:00",
    "2027-01-01T00:00",
    "2027-01-01T09:00",
    "2027-01-03T22:00",
    "2027-01-04T06:00",
    "2027-01-06T08:00",
    "2027-01-06T20:00",
    "2027-01-08T11:00",
    "2027-01-09T03:00",
    "2027-01-09T04:00",
    "2027-01-10T08:00",
)


def at(stamp: str, tz: ZoneInfo | None = None) -> datetime:
    """``stamp`` read in ``tz``, UTC when none is given."""
    return datetime.fromisoformat(stamp).replace(tzinfo=tz or UTC)


def backup(
    stamp: str,
    backup_type: BackupType = BackupType.FULL,
    *,
    id: str | None = None,
    parent: str | None = None,
    archive: bool = False,
) -> Candidate:
    return Candidate(id or stamp, backup_type, at(stamp), parent_id=parent, archive=archive)


def rules(
    *,
    keep_last: int = 1,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    keep_yearly: int = 0,
    max_age_days: int | None = None,
) -> RetentionPolicy:
    """Only the rules named (keep_last cannot be 0, so it is 1 unless named)."""
    return RetentionPolicy(
        keep_last=keep_last,
        keep_daily=keep_daily,
        keep_weekly=keep_weekly,
        keep_monthly=keep_monthly,
        keep_yearly=keep_yearly,
        max_age_days=max_age_days,
    )


SERIES = tuple(backup(stamp) for stamp in STAMPS)

# Each row: the policy, every backup it keeps with its reasons, and the instant (if any) before
# which a backup it does not keep is deleted for its age rather than for no rule keeping it.
TABLE = [
    pytest.param(
        rules(keep_last=1),
        {
            "2027-01-10T08:00": ("last",),
        },
        None,
        id="keep_last-1-keeps-the-newest",
    ),
    pytest.param(
        rules(keep_last=3),
        {
            "2027-01-10T08:00": ("last",),
            "2027-01-09T04:00": ("last",),
            "2027-01-09T03:00": ("last",),
        },
        None,
        id="keep_last-3-keeps-the-three-newest",
    ),
    pytest.param(
        rules(keep_last=100),
        dict.fromkeys(STAMPS, ("last",)),
        None,
        id="keep_last-100-keeps-all-when-there-are-fewer",
    ),
    pytest.param(
        rules(keep_daily=1),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10"),
        },
        None,
        id="daily-1-keeps-the-newest-day",
    ),
    pytest.param(
        rules(keep_daily=3),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10"),
            "2027-01-09T04:00": ("daily 2027-01-09",),
            "2027-01-08T11:00": ("daily 2027-01-08",),
        },
        None,
        id="daily-3-keeps-the-newest-of-each-of-three-days",
    ),
    pytest.param(
        rules(keep_daily=10),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10"),
            "2027-01-09T04:00": ("daily 2027-01-09",),
            "2027-01-08T11:00": ("daily 2027-01-08",),
            "2027-01-06T20:00": ("daily 2027-01-06",),
            "2027-01-04T06:00": ("daily 2027-01-04",),
            "2027-01-03T22:00": ("daily 2027-01-03",),
            "2027-01-01T09:00": ("daily 2027-01-01",),
            "2026-12-31T12:00": ("daily 2026-12-31",),
            "2026-12-28T01:00": ("daily 2026-12-28",),
            "2026-12-27T23:00": ("daily 2026-12-27",),
        },
        None,
        id="daily-10-skips-days-without-a-backup",
    ),
    pytest.param(
        rules(keep_daily=100),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10"),
            "2027-01-09T04:00": ("daily 2027-01-09",),
            "2027-01-08T11:00": ("daily 2027-01-08",),
            "2027-01-06T20:00": ("daily 2027-01-06",),
            "2027-01-04T06:00": ("daily 2027-01-04",),
            "2027-01-03T22:00": ("daily 2027-01-03",),
            "2027-01-01T09:00": ("daily 2027-01-01",),
            "2026-12-31T12:00": ("daily 2026-12-31",),
            "2026-12-28T01:00": ("daily 2026-12-28",),
            "2026-12-27T23:00": ("daily 2026-12-27",),
            "2026-12-24T10:00": ("daily 2026-12-24",),
            "2026-12-20T10:00": ("daily 2026-12-20",),
            "2026-12-01T10:00": ("daily 2026-12-01",),
            "2026-11-30T10:00": ("daily 2026-11-30",),
            "2026-10-05T10:00": ("daily 2026-10-05",),
            "2026-08-10T10:00": ("daily 2026-08-10",),
            "2026-06-30T10:00": ("daily 2026-06-30",),
            "2026-04-15T10:00": ("daily 2026-04-15",),
            "2026-02-02T10:00": ("daily 2026-02-02",),
            "2026-01-04T10:00": ("daily 2026-01-04",),
            "2026-01-01T00:00": ("daily 2026-01-01",),
            "2025-12-31T23:59": ("daily 2025-12-31",),
            "2025-12-29T07:00": ("daily 2025-12-29",),
            "2025-11-01T00:30": ("daily 2025-11-01",),
            "2025-10-31T23:00": ("daily 2025-10-31",),
            "2025-09-01T09:00": ("daily 2025-09-01",),
            "2025-07-20T09:00": ("daily 2025-07-20",),
            "2025-05-01T18:00": ("daily 2025-05-01",),
            "2025-03-30T23:30": ("daily 2025-03-30",),
            "2025-02-14T09:00": ("daily 2025-02-14",),
            "2025-01-06T12:00": ("daily 2025-01-06",),
            "2025-01-05T12:00": ("daily 2025-01-05",),
            "2025-01-01T01:00": ("daily 2025-01-01",),
            "2024-12-31T22:00": ("daily 2024-12-31",),
            "2024-12-30T08:00": ("daily 2024-12-30",),
            "2024-12-28T08:00": ("daily 2024-12-28",),
            "2024-11-02T09:00": ("daily 2024-11-02",),
            "2024-06-15T18:00": ("daily 2024-06-15",),
            "2024-03-01T10:00": ("daily 2024-03-01",),
            "2024-03-01T09:00": ("oldest (daily)",),
        },
        None,
        id="daily-100-runs-out-of-days-and-keeps-the-oldest",
    ),
    pytest.param(
        rules(keep_weekly=5),
        {
            "2027-01-10T08:00": ("last", "weekly 2027-W01"),
            "2027-01-03T22:00": ("weekly 2026-W53",),
            "2026-12-27T23:00": ("weekly 2026-W52",),
            "2026-12-20T10:00": ("weekly 2026-W51",),
            "2026-12-01T10:00": ("weekly 2026-W49",),
        },
        None,
        id="weekly-5-crosses-iso-week-53-and-skips-an-empty-week",
    ),
    pytest.param(
        rules(keep_weekly=100),
        {
            "2027-01-10T08:00": ("last", "weekly 2027-W01"),
            "2027-01-03T22:00": ("weekly 2026-W53",),
            "2026-12-27T23:00": ("weekly 2026-W52",),
            "2026-12-20T10:00": ("weekly 2026-W51",),
            "2026-12-01T10:00": ("weekly 2026-W49",),
            "2026-10-05T10:00": ("weekly 2026-W41",),
            "2026-08-10T10:00": ("weekly 2026-W33",),
            "2026-06-30T10:00": ("weekly 2026-W27",),
            "2026-04-15T10:00": ("weekly 2026-W16",),
            "2026-02-02T10:00": ("weekly 2026-W06",),
            "2026-01-04T10:00": ("weekly 2026-W01",),
            "2025-11-01T00:30": ("weekly 2025-W44",),
            "2025-09-01T09:00": ("weekly 2025-W36",),
            "2025-07-20T09:00": ("weekly 2025-W29",),
            "2025-05-01T18:00": ("weekly 2025-W18",),
            "2025-03-30T23:30": ("weekly 2025-W13",),
            "2025-02-14T09:00": ("weekly 2025-W07",),
            "2025-01-06T12:00": ("weekly 2025-W02",),
            "2025-01-05T12:00": ("weekly 2025-W01",),
            "2024-12-28T08:00": ("weekly 2024-W52",),
            "2024-11-02T09:00": ("weekly 2024-W44",),
            "2024-06-15T18:00": ("weekly 2024-W24",),
            "2024-03-01T10:00": ("weekly 2024-W09",),
            "2024-03-01T09:00": ("oldest (weekly)",),
        },
        None,
        id="weekly-100-uses-iso-years-and-keeps-the-oldest",
    ),
    pytest.param(
        rules(keep_monthly=4),
        {
            "2027-01-10T08:00": ("last", "monthly 2027-01"),
            "2026-12-31T12:00": ("monthly 2026-12",),
            "2026-11-30T10:00": ("monthly 2026-11",),
            "2026-10-05T10:00": ("monthly 2026-10",),
        },
        None,
        id="monthly-4-keeps-the-newest-of-each-month",
    ),
    pytest.param(
        rules(keep_monthly=100),
        {
            "2027-01-10T08:00": ("last", "monthly 2027-01"),
            "2026-12-31T12:00": ("monthly 2026-12",),
            "2026-11-30T10:00": ("monthly 2026-11",),
            "2026-10-05T10:00": ("monthly 2026-10",),
            "2026-08-10T10:00": ("monthly 2026-08",),
            "2026-06-30T10:00": ("monthly 2026-06",),
            "2026-04-15T10:00": ("monthly 2026-04",),
            "2026-02-02T10:00": ("monthly 2026-02",),
            "2026-01-04T10:00": ("monthly 2026-01",),
            "2025-12-31T23:59": ("monthly 2025-12",),
            "2025-11-01T00:30": ("monthly 2025-11",),
            "2025-10-31T23:00": ("monthly 2025-10",),
            "2025-09-01T09:00": ("monthly 2025-09",),
            "2025-07-20T09:00": ("monthly 2025-07",),
            "2025-05-01T18:00": ("monthly 2025-05",),
            "2025-03-30T23:30": ("monthly 2025-03",),
            "2025-02-14T09:00": ("monthly 2025-02",),
            "2025-01-06T12:00": ("monthly 2025-01",),
            "2024-12-31T22:00": ("monthly 2024-12",),
            "2024-11-02T09:00": ("monthly 2024-11",),
            "2024-06-15T18:00": ("monthly 2024-06",),
            "2024-03-01T10:00": ("monthly 2024-03",),
            "2024-03-01T09:00": ("oldest (monthly)",),
        },
        None,
        id="monthly-100-runs-out-of-months-and-keeps-the-oldest",
    ),
    pytest.param(
        rules(keep_yearly=2),
        {
            "2027-01-10T08:00": ("last", "yearly 2027"),
            "2026-12-31T12:00": ("yearly 2026",),
        },
        None,
        id="yearly-2-crosses-new-year",
    ),
    pytest.param(
        rules(keep_yearly=10),
        {
            "2027-01-10T08:00": ("last", "yearly 2027"),
            "2026-12-31T12:00": ("yearly 2026",),
            "2025-12-31T23:59": ("yearly 2025",),
            "2024-12-31T22:00": ("yearly 2024",),
            "2024-03-01T09:00": ("oldest (yearly)",),
        },
        None,
        id="yearly-10-runs-out-of-years-and-keeps-the-oldest",
    ),
    pytest.param(
        rules(keep_last=1, max_age_days=30),
        {
            "2027-01-10T08:00": ("last",),
        },
        "2026-12-11T12:00",
        id="max_age-alone-deletes-old-backups-for-their-age",
    ),
    pytest.param(
        rules(keep_daily=100, max_age_days=30),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10"),
            "2027-01-09T04:00": ("daily 2027-01-09",),
            "2027-01-08T11:00": ("daily 2027-01-08",),
            "2027-01-06T20:00": ("daily 2027-01-06",),
            "2027-01-04T06:00": ("daily 2027-01-04",),
            "2027-01-03T22:00": ("daily 2027-01-03",),
            "2027-01-01T09:00": ("daily 2027-01-01",),
            "2026-12-31T12:00": ("daily 2026-12-31",),
            "2026-12-28T01:00": ("daily 2026-12-28",),
            "2026-12-27T23:00": ("daily 2026-12-27",),
            "2026-12-24T10:00": ("daily 2026-12-24",),
            "2026-12-20T10:00": ("daily 2026-12-20",),
        },
        "2026-12-11T12:00",
        id="max_age-drops-old-dailies-and-the-oldest",
    ),
    pytest.param(
        rules(keep_last=10, keep_daily=7, max_age_days=3),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10"),
            "2027-01-09T04:00": ("last", "daily 2027-01-09"),
            "2027-01-09T03:00": ("last",),
            "2027-01-08T11:00": ("last", "daily 2027-01-08"),
            "2027-01-06T20:00": ("last",),
            "2027-01-06T08:00": ("last",),
            "2027-01-04T06:00": ("last",),
            "2027-01-03T22:00": ("last",),
            "2027-01-01T09:00": ("last",),
            "2027-01-01T00:00": ("last",),
        },
        "2027-01-07T12:00",
        id="keep_last-keeps-its-newest-past-max_age",
    ),
    pytest.param(
        rules(keep_last=5, keep_weekly=3, max_age_days=14),
        {
            "2027-01-10T08:00": ("last", "weekly 2027-W01"),
            "2027-01-09T04:00": ("last",),
            "2027-01-09T03:00": ("last",),
            "2027-01-08T11:00": ("last",),
            "2027-01-06T20:00": ("last",),
            "2027-01-03T22:00": ("weekly 2026-W53",),
            "2026-12-27T23:00": ("weekly 2026-W52",),
        },
        "2026-12-27T12:00",
        id="keep_last-and-weekly-within-max_age",
    ),
    pytest.param(
        rules(keep_last=2, keep_daily=3, keep_weekly=2, keep_monthly=3, keep_yearly=2),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10", "weekly 2027-W01", "monthly 2027-01", "yearly 2027"),
            "2027-01-09T04:00": ("last", "daily 2027-01-09"),
            "2027-01-08T11:00": ("daily 2027-01-08",),
            "2027-01-03T22:00": ("weekly 2026-W53",),
            "2026-12-31T12:00": ("monthly 2026-12", "yearly 2026"),
            "2026-11-30T10:00": ("monthly 2026-11",),
        },
        None,
        id="every-rule-lists-every-reason",
    ),
    pytest.param(
        rules(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=12),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10", "weekly 2027-W01", "monthly 2027-01"),
            "2027-01-09T04:00": ("last", "daily 2027-01-09"),
            "2027-01-09T03:00": ("last",),
            "2027-01-08T11:00": ("daily 2027-01-08",),
            "2027-01-06T20:00": ("daily 2027-01-06",),
            "2027-01-04T06:00": ("daily 2027-01-04",),
            "2027-01-03T22:00": ("daily 2027-01-03", "weekly 2026-W53"),
            "2027-01-01T09:00": ("daily 2027-01-01",),
            "2026-12-31T12:00": ("monthly 2026-12",),
            "2026-12-27T23:00": ("weekly 2026-W52",),
            "2026-12-20T10:00": ("weekly 2026-W51",),
            "2026-11-30T10:00": ("monthly 2026-11",),
            "2026-10-05T10:00": ("monthly 2026-10",),
            "2026-08-10T10:00": ("monthly 2026-08",),
            "2026-06-30T10:00": ("monthly 2026-06",),
            "2026-04-15T10:00": ("monthly 2026-04",),
            "2026-02-02T10:00": ("monthly 2026-02",),
            "2026-01-04T10:00": ("monthly 2026-01",),
            "2025-12-31T23:59": ("monthly 2025-12",),
            "2025-11-01T00:30": ("monthly 2025-11",),
            "2025-10-31T23:00": ("monthly 2025-10",),
        },
        None,
        id="the-shipped-default-policy",
    ),
    pytest.param(
        rules(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=10, max_age_days=365),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10", "weekly 2027-W01", "monthly 2027-01", "yearly 2027"),
            "2027-01-09T04:00": ("daily 2027-01-09",),
            "2027-01-08T11:00": ("daily 2027-01-08",),
            "2027-01-06T20:00": ("daily 2027-01-06",),
            "2027-01-04T06:00": ("daily 2027-01-04",),
            "2027-01-03T22:00": ("daily 2027-01-03", "weekly 2026-W53"),
            "2027-01-01T09:00": ("daily 2027-01-01",),
            "2026-12-31T12:00": ("monthly 2026-12", "yearly 2026"),
            "2026-12-27T23:00": ("weekly 2026-W52",),
            "2026-12-20T10:00": ("weekly 2026-W51",),
            "2026-11-30T10:00": ("monthly 2026-11",),
            "2026-10-05T10:00": ("monthly 2026-10",),
            "2026-08-10T10:00": ("monthly 2026-08",),
            "2026-06-30T10:00": ("monthly 2026-06",),
            "2026-04-15T10:00": ("monthly 2026-04",),
            "2026-02-02T10:00": ("monthly 2026-02",),
        },
        "2026-01-10T12:00",
        id="max_age-cuts-monthly-yearly-and-oldest",
    ),
    pytest.param(
        rules(keep_weekly=2, keep_monthly=2),
        {
            "2027-01-10T08:00": ("last", "weekly 2027-W01", "monthly 2027-01"),
            "2027-01-03T22:00": ("weekly 2026-W53",),
            "2026-12-31T12:00": ("monthly 2026-12",),
        },
        None,
        id="weekly-and-monthly-overlap-on-the-newest",
    ),
    pytest.param(
        rules(keep_daily=2, keep_weekly=2),
        {
            "2027-01-10T08:00": ("last", "daily 2027-01-10", "weekly 2027-W01"),
            "2027-01-09T04:00": ("daily 2027-01-09",),
            "2027-01-03T22:00": ("weekly 2026-W53",),
        },
        None,
        id="daily-and-weekly-across-new-year",
    ),
    pytest.param(
        rules(keep_monthly=3, keep_yearly=3),
        {
            "2027-01-10T08:00": ("last", "monthly 2027-01", "yearly 2027"),
            "2026-12-31T12:00": ("monthly 2026-12", "yearly 2026"),
            "2026-11-30T10:00": ("monthly 2026-11",),
            "2025-12-31T23:59": ("yearly 2025",),
        },
        None,
        id="monthly-and-yearly-share-year-ends",
    ),
]


def expected_deletions(
    policy: RetentionPolicy, keep: dict[str, tuple[str, ...]], aged_before: str | None
) -> dict[str, str]:
    too_old = f"older than {policy.max_age_days} days (max_age_days)"
    return {
        stamp: too_old if aged_before is not None and stamp < aged_before else NOT_KEPT
        for stamp in reversed(STAMPS)
        if stamp not in keep
    }


@pytest.mark.parametrize(("policy", "keep", "aged_before"), TABLE)
def test_each_policy_keeps_exactly_the_expected_backups_for_the_expected_reasons(
    policy: RetentionPolicy, keep: dict[str, tuple[str, ...]], aged_before: str | None
) -> None:
    plan = apply_policy(SERIES, policy, NOW)

    assert plan.keep == keep
    assert plan.delete == expected_deletions(policy, keep, aged_before)


def newest_first(backups: tuple[Candidate, ...]) -> list[str]:
    return [item.id for item in sorted(backups, key=lambda item: (item.created_at, item.id), reverse=True)]


@pytest.mark.parametrize("tz", [UTC, PARIS, NEW_YORK], ids=["UTC", "Paris", "New-York"])
@pytest.mark.parametrize(("policy", "keep", "aged_before"), TABLE)
def test_every_backup_is_either_kept_or_deleted_and_both_lists_run_newest_first(
    policy: RetentionPolicy, keep: dict[str, tuple[str, ...]], aged_before: str | None, tz: ZoneInfo
) -> None:
    del keep, aged_before  # only the policy matters here
    plan = apply_policy(SERIES, policy, NOW, tz)

    assert plan.keep.keys().isdisjoint(plan.delete)
    assert plan.keep.keys() | plan.delete.keys() == set(STAMPS)
    assert all(plan.keep.values())
    assert list(plan.keep) == [stamp for stamp in newest_first(SERIES) if stamp in plan.keep]
    assert list(plan.delete) == [stamp for stamp in newest_first(SERIES) if stamp in plan.delete]


@pytest.mark.parametrize(("policy", "keep", "aged_before"), TABLE)
def test_the_plan_does_not_depend_on_the_order_the_backups_are_given_in(
    policy: RetentionPolicy, keep: dict[str, tuple[str, ...]], aged_before: str | None
) -> None:
    del keep, aged_before
    # Newest first, oldest first, and interleaved (odd positions, then even ones).
    orders = [SERIES, SERIES[::-1], SERIES[1::2] + SERIES[::2]]

    plans = [apply_policy(order, policy, NOW) for order in orders]

    assert all(plan == plans[0] for plan in plans)
    assert all(list(plan.keep) == list(plans[0].keep) for plan in plans)


def test_no_backups_give_an_empty_plan() -> None:
    assert apply_policy([], rules(keep_daily=7, max_age_days=30), NOW) == RetentionPlan(keep={}, delete={})


def test_backups_are_accepted_from_any_iterable() -> None:
    plan = apply_policy(iter(SERIES[-2:]), rules(), NOW)

    assert plan.keep == {"2027-01-10T08:00": ("last",)}
    assert plan.delete == {"2027-01-09T04:00": NOT_KEPT}


# ---- Time zones: buckets are calendar days, weeks, months and years in the zone asked for.


@pytest.mark.parametrize(
    ("policy", "stamps", "tz", "keep"),
    [
        pytest.param(
            rules(keep_daily=2),
            ["2026-06-15T08:00", "2026-06-14T23:30", "2026-06-14T20:00"],
            UTC,
            {"2026-06-15T08:00": ("last", "daily 2026-06-15"), "2026-06-14T23:30": ("daily 2026-06-14",)},
            id="daily-in-UTC-23:30-is-the-same-day",
        ),
        pytest.param(
            rules(keep_daily=2),
            ["2026-06-15T08:00", "2026-06-14T23:30", "2026-06-14T20:00"],
            PARIS,
            {"2026-06-15T08:00": ("last", "daily 2026-06-15"), "2026-06-14T20:00": ("daily 2026-06-14",)},
            id="daily-in-Paris-23:30-UTC-is-the-next-day",
        ),
        pytest.param(
            rules(keep_daily=2),
            ["2026-06-15T08:00", "2026-06-15T02:00", "2026-06-14T20:00"],
            NEW_YORK,
            {"2026-06-15T08:00": ("last", "daily 2026-06-15"), "2026-06-15T02:00": ("daily 2026-06-14",)},
            id="daily-in-New-York-02:00-UTC-is-the-previous-day",
        ),
        pytest.param(
            rules(keep_weekly=2),
            ["2026-06-15T08:00", "2026-06-14T23:30", "2026-06-14T20:00"],
            UTC,
            {"2026-06-15T08:00": ("last", "weekly 2026-W25"), "2026-06-14T23:30": ("weekly 2026-W24",)},
            id="weekly-in-UTC-sunday-23:30-ends-the-week",
        ),
        pytest.param(
            rules(keep_weekly=2),
            ["2026-06-15T08:00", "2026-06-14T23:30", "2026-06-14T20:00"],
            PARIS,
            {"2026-06-15T08:00": ("last", "weekly 2026-W25"), "2026-06-14T20:00": ("weekly 2026-W24",)},
            id="weekly-in-Paris-sunday-23:30-UTC-starts-the-next-week",
        ),
        pytest.param(
            rules(keep_monthly=2),
            ["2026-07-01T08:00", "2026-06-30T23:30", "2026-06-30T20:00"],
            PARIS,
            {"2026-07-01T08:00": ("last", "monthly 2026-07"), "2026-06-30T20:00": ("monthly 2026-06",)},
            id="monthly-in-Paris-the-last-evening-of-june-is-july",
        ),
        pytest.param(
            rules(keep_yearly=2),
            ["2027-01-01T08:00", "2026-12-31T23:30", "2026-12-31T20:00"],
            UTC,
            {"2027-01-01T08:00": ("last", "yearly 2027"), "2026-12-31T23:30": ("yearly 2026",)},
            id="yearly-in-UTC-new-years-eve-23:30-is-the-old-year",
        ),
        pytest.param(
            rules(keep_yearly=2),
            ["2027-01-01T08:00", "2026-12-31T23:30", "2026-12-31T20:00"],
            PARIS,
            {"2027-01-01T08:00": ("last", "yearly 2027"), "2026-12-31T20:00": ("yearly 2026",)},
            id="yearly-in-Paris-new-years-eve-23:30-UTC-is-the-new-year",
        ),
    ],
)
def test_a_backup_near_midnight_falls_in_the_bucket_of_the_local_calendar(
    policy: RetentionPolicy, stamps: list[str], tz: ZoneInfo, keep: dict[str, tuple[str, ...]]
) -> None:
    plan = apply_policy([backup(stamp) for stamp in stamps], policy, NOW, tz)

    assert plan.keep == keep
    assert plan.delete == {stamp: NOT_KEPT for stamp in stamps if stamp not in keep}


def test_max_age_counts_24_hour_days_even_when_now_is_given_across_a_summer_time_change() -> None:
    # Paris moved to summer time on 2026-03-29 at 01:00 UTC: one calendar day back from noon that
    # day is only 23 hours, but max_age_days counts 24 hours per day.
    now = datetime(2026, 3, 29, 12, 0, tzinfo=PARIS)  # 10:00 UTC
    backups = [backup("2026-03-29T09:00"), backup("2026-03-28T10:30"), backup("2026-03-28T09:30")]

    plan = apply_policy(backups, rules(keep_daily=7, max_age_days=1), now, PARIS)

    assert plan.keep == {"2026-03-29T09:00": ("last", "daily 2026-03-29"), "2026-03-28T10:30": ("daily 2026-03-28",)}
    assert plan.delete == {"2026-03-28T09:30": "older than 1 days (max_age_days)"}


def test_a_backup_exactly_max_age_days_old_is_not_older_than_max_age() -> None:
    backups = [backup("2027-01-10T08:00"), backup("2027-01-09T12:00"), backup("2027-01-09T11:59")]

    plan = apply_policy(backups, rules(keep_daily=7, max_age_days=1), NOW)

    assert plan.keep == {"2027-01-10T08:00": ("last", "daily 2027-01-10"), "2027-01-09T12:00": ("daily 2027-01-09",)}
    assert plan.delete == {"2027-01-09T11:59": "older than 1 days (max_age_days)"}


# ---- Ties: at the same instant, the greater id counts as the newer backup.


def test_backups_made_at_the_same_instant_are_ordered_by_id_the_greater_counting_as_newer() -> None:
    # The same instant written with two offsets, so only the id can order them.
    first = Candidate("a", BackupType.FULL, datetime(2027, 1, 9, 10, 0, tzinfo=UTC))
    second = Candidate("b", BackupType.FULL, datetime(2027, 1, 9, 11, 0, tzinfo=PARIS))
    earlier = backup("2027-01-09T09:00")

    for backups in ([first, second, earlier], [earlier, second, first]):
        plan = apply_policy(backups, rules(keep_daily=1), NOW)

        assert list(plan.keep.items()) == [("b", ("last", "daily 2027-01-09"))]
        assert list(plan.delete.items()) == [("a", NOT_KEPT), ("2027-01-09T09:00", NOT_KEPT)]


# ---- Series: each type on its own, and archives apart from the others of their type.


def test_each_backup_type_is_a_series_of_its_own() -> None:
    days = ["2027-01-07T10:00", "2027-01-08T10:00", "2027-01-09T10:00"]
    backups = [backup(day, kind, id=f"{kind}-{day[:10]}") for kind in BackupType for day in days]

    plan = apply_policy(backups, rules(keep_daily=2), NOW)

    for kind in BackupType:
        assert plan.keep[f"{kind}-2027-01-09"] == ("last", "daily 2027-01-09")
        assert plan.keep[f"{kind}-2027-01-08"] == ("daily 2027-01-08",)
        assert plan.delete[f"{kind}-2027-01-07"] == NOT_KEPT
    assert len(plan.keep) == 2 * len(BackupType)


def test_archives_do_not_take_the_buckets_of_regular_backups_of_the_same_type() -> None:
    backups = [
        backup("2027-01-09T10:00"),
        backup("2027-01-08T10:00"),
        backup("2027-01-05T10:00", archive=True),
    ]

    plan = apply_policy(backups, rules(keep_monthly=1), NOW)

    assert plan.keep == {
        "2027-01-09T10:00": ("last", "monthly 2027-01"),
        "2027-01-05T10:00": ("archive monthly 2027-01",),
    }
    assert plan.delete == {"2027-01-08T10:00": NOT_KEPT}


# ---- Archives: kept by keep_monthly and keep_yearly only, whatever their age.

ARCHIVE_STAMPS = [
    "2024-01-10T03:00",
    "2024-01-31T03:00",
    "2025-06-30T03:00",
    "2025-12-31T03:00",
    "2026-11-30T03:00",
    "2026-12-15T03:00",
    "2026-12-31T03:00",
    "2027-01-01T03:00",
]
ARCHIVES = [backup(stamp, archive=True) for stamp in ARCHIVE_STAMPS]


def test_archives_are_kept_by_the_monthly_and_yearly_rules_and_not_by_keep_last_daily_weekly_or_max_age() -> None:
    policy = rules(keep_last=5, keep_daily=7, keep_weekly=4, keep_monthly=2, keep_yearly=3, max_age_days=30)

    plan = apply_policy(ARCHIVES, policy, NOW)

    assert plan.keep == {
        "2027-01-01T03:00": ("archive monthly 2027-01", "archive yearly 2027"),
        "2026-12-31T03:00": ("archive monthly 2026-12", "archive yearly 2026"),
        "2025-12-31T03:00": ("archive yearly 2025",),
    }
    assert plan.delete == {stamp: ARCHIVE_NOT_KEPT for stamp in reversed(ARCHIVE_STAMPS) if stamp not in plan.keep}


def test_archives_keep_the_oldest_when_there_are_fewer_months_and_years_than_asked_for() -> None:
    plan = apply_policy(ARCHIVES, rules(keep_monthly=100, keep_yearly=100), NOW)

    assert plan.keep == {
        "2027-01-01T03:00": ("archive monthly 2027-01", "archive yearly 2027"),
        "2026-12-31T03:00": ("archive monthly 2026-12", "archive yearly 2026"),
        "2026-11-30T03:00": ("archive monthly 2026-11",),
        "2025-12-31T03:00": ("archive monthly 2025-12", "archive yearly 2025"),
        "2025-06-30T03:00": ("archive monthly 2025-06",),
        "2024-01-31T03:00": ("archive monthly 2024-01", "archive yearly 2024"),
        "2024-01-10T03:00": ("oldest (archive monthly)", "oldest (archive yearly)"),
    }
    assert plan.delete == {"2026-12-15T03:00": ARCHIVE_NOT_KEPT}


def test_without_monthly_or_yearly_rules_even_the_newest_archive_is_deleted() -> None:
    regular = backup("2027-01-09T10:00")

    plan = apply_policy([*ARCHIVES, regular], rules(keep_last=10, keep_daily=10, keep_weekly=10), NOW)

    assert plan.keep == {"2027-01-09T10:00": ("last", "daily 2027-01-09", "weekly 2027-W01")}
    assert plan.delete == {stamp: ARCHIVE_NOT_KEPT for stamp in reversed(ARCHIVE_STAMPS)}


# ---- Chains: a kept incremental keeps everything it is restored from.

INCREMENTAL = BackupType.INCREMENTAL


def test_a_kept_incremental_keeps_its_whole_chain_past_max_age_and_a_deleted_one_keeps_nothing() -> None:
    backups = [
        backup("2026-11-01T02:00", id="old-full"),
        backup("2026-11-02T02:00", INCREMENTAL, id="old-incr-1", parent="old-full"),
        backup("2026-11-03T02:00", INCREMENTAL, id="old-incr-2", parent="old-incr-1"),
        backup("2026-12-01T02:00", id="full"),
        backup("2026-12-02T02:00", INCREMENTAL, id="incr-1", parent="full"),
        backup("2026-12-03T02:00", INCREMENTAL, id="incr-2", parent="incr-1"),
        backup("2026-12-04T02:00", INCREMENTAL, id="incr-3", parent="incr-2"),
        backup("2027-01-09T02:00", id="new-full"),
    ]

    plan = apply_policy(backups, rules(max_age_days=7), NOW)

    assert plan.keep == {
        "new-full": ("last",),
        "incr-3": ("last",),
        "incr-2": ("needed by incremental incr-3",),
        "incr-1": ("needed by incremental incr-3",),
        "full": ("needed by incremental incr-3",),
    }
    assert plan.delete == {
        "old-incr-2": "older than 7 days (max_age_days)",
        "old-incr-1": "older than 7 days (max_age_days)",
        "old-full": "older than 7 days (max_age_days)",
    }


def test_a_backup_already_kept_also_lists_the_newest_incremental_that_needs_it() -> None:
    backups = [
        backup("2027-01-03T02:00", id="full"),
        backup("2027-01-04T02:00", INCREMENTAL, id="incr-1", parent="full"),
        backup("2027-01-05T02:00", INCREMENTAL, id="incr-2", parent="incr-1"),
    ]

    plan = apply_policy(backups, rules(keep_last=2), NOW)

    assert plan.keep == {
        "incr-2": ("last",),
        "incr-1": ("last", "needed by incremental incr-2"),
        "full": ("last", "needed by incremental incr-2"),
    }
    assert plan.delete == {}


def test_a_chain_may_start_from_a_files_backup() -> None:
    backups = [
        backup("2027-01-01T02:00", BackupType.FILES, id="files-base"),
        backup("2027-01-02T02:00", INCREMENTAL, id="incr-1", parent="files-base"),
        backup("2027-01-03T02:00", INCREMENTAL, id="incr-2", parent="incr-1"),
        backup("2027-01-04T02:00", BackupType.FILES, id="files-new"),
    ]

    plan = apply_policy(backups, rules(), NOW)

    assert plan.keep == {
        "files-new": ("last",),
        "incr-2": ("last",),
        "incr-1": ("needed by incremental incr-2",),
        "files-base": ("needed by incremental incr-2",),
    }
    assert plan.delete == {}


def test_a_chain_stops_at_a_parent_that_is_not_a_candidate() -> None:
    backups = [
        backup("2027-01-02T02:00", INCREMENTAL, id="incr-1", parent="already-gone"),
        backup("2027-01-03T02:00", INCREMENTAL, id="incr-2", parent="incr-1"),
    ]

    plan = apply_policy(backups, rules(), NOW)

    assert plan.keep == {"incr-2": ("last",), "incr-1": ("needed by incremental incr-2",)}
    assert plan.delete == {}


def test_parents_that_form_a_loop_do_not_stall_the_policy() -> None:
    backups = [
        backup("2027-01-02T02:00", INCREMENTAL, id="incr-a", parent="incr-b"),
        backup("2027-01-03T02:00", INCREMENTAL, id="incr-b", parent="incr-a"),
    ]

    plan = apply_policy(backups, rules(), NOW)

    assert set(plan.keep) == {"incr-a", "incr-b"}
    assert plan.keep["incr-a"] == ("needed by incremental incr-b",)


# ---- Refusals.


def test_a_naive_creation_time_is_refused() -> None:
    naive = Candidate("naive", BackupType.FULL, datetime(2027, 1, 9, 10, 0))

    with pytest.raises(ValueError, match="naive: created_at must be timezone-aware"):
        apply_policy([naive], rules(), NOW)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        apply_policy(SERIES, rules(), NOW.replace(tzinfo=None))


def test_a_backup_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="2027-01-10T08:00 is listed more than once"):
        apply_policy([*SERIES, SERIES[-1]], rules(), NOW)
