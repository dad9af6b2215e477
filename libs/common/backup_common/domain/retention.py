"""Which completed backups a retention policy keeps, and why each of the others may be deleted.

The rules are those of restic's ``forget`` and borg's ``prune`` (restic 0.17 and later): keep the
newest *n*, plus the newest backup of each of the *n* most recent days, ISO weeks, months and years
that have one. Each backup type is a series of its own, and so are archive backups within a type.
Incremental backups keep every backup their chain depends on. ``apply_policy`` only decides: it
does no I/O and reads no clock, so the same input always gives the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

from backup_common.domain.documents import RetentionPolicy
from backup_common.domain.events import BackupType

NOT_KEPT = "not kept by any rule"
ARCHIVE_NOT_KEPT = "archive not kept by keep_monthly or keep_yearly"


@dataclass(frozen=True)
class Candidate:
    """A completed backup as the policy sees it."""

    id: str
    type: BackupType
    created_at: datetime  # timezone-aware
    parent_id: str | None = None  # an incremental's parent (a full, files or incremental backup)
    archive: bool = False


@dataclass(frozen=True)
class RetentionPlan:
    """Every candidate, either kept with the reasons (at least one) or deleted with one reason.

    Both mappings are ordered newest first.
    """

    keep: dict[str, tuple[str, ...]]
    delete: dict[str, str]


@dataclass(frozen=True)
class _BucketRule:
    """Keep the newest backup of each of the ``count`` most recent buckets (days, weeks, ...)."""

    name: str  # as in reasons: "daily", "archive monthly", ...
    count: int
    bucket: Callable[[date], str]  # the bucket's label, from the local calendar day


def _day(day: date) -> str:
    return day.isoformat()


def _iso_week(day: date) -> str:
    # The ISO year, not the calendar year: 2024-12-30 is in 2025-W01 and 2027-01-01 in 2026-W53.
    year, week, _ = day.isocalendar()
    return f"{year:04d}-W{week:02d}"


def _month(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def _year(day: date) -> str:
    return f"{day.year:04d}"


def _newest_first(candidate: Candidate) -> tuple[datetime, str]:
    """Sort key, used with ``reverse=True``: a tie on created_at puts the greater id first."""
    return (candidate.created_at, candidate.id)


def apply_policy(
    backups: Iterable[Candidate], policy: RetentionPolicy, now: datetime, tz: tzinfo = UTC
) -> RetentionPlan:
    """Decide, for every candidate, whether ``policy`` keeps it at ``now``.

    Days, weeks, months and years are calendar ones in ``tz``. Raises ValueError for a naive
    datetime or a repeated id, either of which would make the plan ambiguous.
    """
    ordered = sorted(_checked(backups, now), key=_newest_first, reverse=True)

    series: dict[tuple[BackupType, bool], list[Candidate]] = {}
    for candidate in ordered:
        series.setdefault((candidate.type, candidate.archive), []).append(candidate)

    kept: dict[str, list[str]] = {}
    deleted: dict[str, str] = {}
    for (_, archive), members in series.items():
        if archive:
            _decide_archives(members, policy, tz, kept, deleted)
        else:
            _decide_regular(members, policy, now, tz, kept, deleted)

    _keep_chains(ordered, kept, deleted)

    return RetentionPlan(
        keep={c.id: tuple(kept[c.id]) for c in ordered if c.id in kept},
        delete={c.id: deleted[c.id] for c in ordered if c.id in deleted},
    )


def _checked(backups: Iterable[Candidate], now: datetime) -> list[Candidate]:
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    candidates = list(backups)
    seen: set[str] = set()
    for candidate in candidates:
        if candidate.created_at.utcoffset() is None:
            raise ValueError(f"backup {candidate.id}: created_at must be timezone-aware")
        if candidate.id in seen:
            raise ValueError(f"backup {candidate.id} is listed more than once")
        seen.add(candidate.id)
    return candidates


def _decide_regular(
    members: Sequence[Candidate],
    policy: RetentionPolicy,
    now: datetime,
    tz: tzinfo,
    kept: dict[str, list[str]],
    deleted: dict[str, str],
) -> None:
    """One non-archive series, newest first: keep_last, the bucket rules, then max_age_days."""
    rules = (
        _BucketRule("daily", policy.keep_daily, _day),
        _BucketRule("weekly", policy.keep_weekly, _iso_week),
        _BucketRule("monthly", policy.keep_monthly, _month),
        _BucketRule("yearly", policy.keep_yearly, _year),
    )
    by_buckets = _walk_buckets(members, rules, tz)
    newest = {candidate.id for candidate in members[: policy.keep_last]}
    # In UTC, so that "n days" is n x 24 hours even when `now` carries a zone with summer time.
    cutoff = None if policy.max_age_days is None else now.astimezone(UTC) - timedelta(days=policy.max_age_days)

    for candidate in members:
        too_old = cutoff is not None and candidate.created_at < cutoff
        if candidate.id in newest:
            # max_age_days overrides the bucket rules, so they are no reason to keep an old one.
            kept[candidate.id] = ["last"] if too_old else ["last", *by_buckets[candidate.id]]
        elif too_old:
            deleted[candidate.id] = f"older than {policy.max_age_days} days (max_age_days)"
        elif by_buckets[candidate.id]:
            kept[candidate.id] = by_buckets[candidate.id]
        else:
            deleted[candidate.id] = NOT_KEPT


def _decide_archives(
    members: Sequence[Candidate],
    policy: RetentionPolicy,
    tz: tzinfo,
    kept: dict[str, list[str]],
    deleted: dict[str, str],
) -> None:
    """One archive series: only the monthly and yearly rules keep archives, whatever their age."""
    rules = (
        _BucketRule("archive monthly", policy.keep_monthly, _month),
        _BucketRule("archive yearly", policy.keep_yearly, _year),
    )
    for candidate_id, reasons in _walk_buckets(members, rules, tz).items():
        if reasons:
            kept[candidate_id] = reasons
        else:
            deleted[candidate_id] = ARCHIVE_NOT_KEPT


def _walk_buckets(members: Sequence[Candidate], rules: Sequence[_BucketRule], tz: tzinfo) -> dict[str, list[str]]:
    """For each member of a newest-first series, the reasons the bucket rules keep it, in rule order."""
    reasons: dict[str, list[str]] = {candidate.id: [] for candidate in members}
    if not members:
        return reasons
    days = {candidate.id: candidate.created_at.astimezone(tz).date() for candidate in members}
    for rule in rules:
        if rule.count == 0:
            continue
        kept = 0
        last_bucket: str | None = None
        last_kept_id: str | None = None
        for candidate in members:
            if kept == rule.count:
                break
            bucket = rule.bucket(days[candidate.id])
            # The series runs newest first, so the first backup seen in a bucket is its newest.
            if bucket != last_bucket:
                reasons[candidate.id].append(f"{rule.name} {bucket}")
                kept += 1
                last_bucket = bucket
                last_kept_id = candidate.id
        # Too few buckets to keep `count` backups: also keep the series' first backup, so that the
        # history reaches back as far as it can (restic 0.17, borg).
        oldest = members[-1]
        if kept < rule.count and last_kept_id != oldest.id:
            reasons[oldest.id].append(f"oldest ({rule.name})")
    return reasons


def _keep_chains(ordered: Sequence[Candidate], kept: dict[str, list[str]], deleted: dict[str, str]) -> None:
    """Keep every backup a kept incremental needs to be restored, naming the newest incremental that needs it.

    ``ordered`` is every candidate, newest first.
    """
    by_id = {candidate.id: candidate for candidate in ordered}

    def ancestors(candidate: Candidate) -> Iterable[Candidate]:
        # The seen set only guards against a malformed catalog whose parents form a loop.
        seen = {candidate.id}
        parent_id = candidate.parent_id
        while parent_id is not None and parent_id in by_id and parent_id not in seen:
            seen.add(parent_id)
            parent = by_id[parent_id]
            yield parent
            parent_id = parent.parent_id

    # First which backups the chains keep (a needed incremental needs its own parents too) ...
    needed: set[str] = set()
    for candidate in ordered:
        if candidate.type is BackupType.INCREMENTAL and candidate.id in kept:
            needed.update(parent.id for parent in ancestors(candidate))
    # ... then whom to name: walking newest first, the first incremental to reach a backup is the
    # newest that needs it.
    named: set[str] = set()
    for candidate in ordered:
        if candidate.type is not BackupType.INCREMENTAL or (candidate.id not in kept and candidate.id not in needed):
            continue
        for parent in ancestors(candidate):
            if parent.id in named:
                continue
            named.add(parent.id)
            deleted.pop(parent.id, None)
            kept.setdefault(parent.id, []).append(f"needed by incremental {candidate.id}")
