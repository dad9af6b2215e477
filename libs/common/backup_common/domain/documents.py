"""The two documents administrators edit through the API: the backup schedule and the settings.

Both are validated strictly (unknown keys are errors, so a typo is never silently ignored); the
catalog seeds each from its shipped default (infra/config/) the first time it is read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from backup_common.domain.events import BackupType
from backup_common.domain.notifications import NotificationKind


def _check_cron(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError("cron must have five fields: minute hour day-of-month month day-of-week")
    try:
        CronSim(value, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression: {exc}") from None
    return value


Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Cron = Annotated[
    str,
    AfterValidator(_check_cron),
    Field(description="Five fields: minute hour day-of-month month day-of-week.", examples=["0 2 * * *"]),
]


class _Strict(BaseModel):
    # Booleans and integers are StrictBool and StrictInt field by field: lax mode would take "no" as
    # false and true as 1. (Model-wide strict mode would also refuse the strings JSON gives enums.)
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleEntry(_Strict):
    name: Name
    type: BackupType
    cron: Cron
    enabled: StrictBool = True
    archive: StrictBool = Field(False, description="Backups it makes are kept by the monthly archive rule.")
    description: str = Field("", max_length=500)


class ScheduleDocument(_Strict):
    timezone: str = "UTC"
    schedules: list[ScheduleEntry] = Field(max_length=50)

    @field_validator("timezone")
    @classmethod
    def _timezone_exists(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _names_are_unique(self) -> ScheduleDocument:
        names = [entry.name for entry in self.schedules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"schedule names must be unique: {', '.join(duplicates)}")
        return self


class RetentionPolicy(_Strict):
    keep_last: StrictInt = Field(3, ge=1, le=1000, description="Most recent completed backups always kept.")
    keep_daily: StrictInt = Field(
        7, ge=0, le=3650, description="For this many most recent days with a backup, the newest of each day is kept."
    )
    keep_weekly: StrictInt = Field(
        4, ge=0, le=520, description="For this many most recent ISO weeks with a backup, the newest of each is kept."
    )
    keep_monthly: StrictInt = Field(
        12,
        ge=0,
        le=1200,
        description="For this many most recent months with a backup, the newest of each is kept (archives too).",
    )
    keep_yearly: StrictInt = Field(
        0,
        ge=0,
        le=100,
        description="For this many most recent years with a backup, the newest of each is kept (archives too).",
    )
    max_age_days: StrictInt | None = Field(
        None,
        ge=1,
        le=36500,
        description="Backups older than this many days are deleted even if a daily, weekly, monthly or yearly rule "
        "would keep them; keep_last and archives are exempt. Null means no limit.",
    )


class EncryptionSettings(_Strict):
    enabled: StrictBool = True


class CompressionSettings(_Strict):
    level: StrictInt = Field(
        3, ge=0, le=3, description="Deflate effort: 0 is fastest, 3 gives the smallest archives (the default)."
    )


class DatabaseSettings(_Strict):
    keep_definers: StrictBool = True


class VerificationSettings(_Strict):
    after_backup: StrictBool = Field(True, description="Verify each backup as soon as it completes.")
    restore_drill_cron: Cron | None = Field(
        "0 4 * * 6", description="When completed backups are verified again, those verified longest ago first (UTC)."
    )
    drill_budget_minutes: StrictInt = Field(
        60, ge=1, le=1440, description="How long one scheduled round may start new verifications for."
    )


class RestoreLimits(_Strict):
    max_total_bytes: StrictInt = Field(1 << 40, ge=1)
    max_entries: StrictInt = Field(10_000_000, ge=1)
    # Deflate expands at most about 1032:1 (a run of zeros at isal's level 1 reaches 1015:1), so the
    # default refuses only a member that claims more than its compressed bytes could hold.
    max_compression_ratio: StrictInt = Field(1100, ge=1)


MAX_WEBHOOK_URL_LENGTH = 2000
MAX_WEBHOOKS = 20


def _check_webhook_url(value: str) -> str:
    if not value.isascii() or any(char.isspace() or not char.isprintable() for char in value):
        raise ValueError("must be ASCII without spaces (percent-encode other characters, use punycode for hosts)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a port that is not a number in 0-65535)
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.fragment:
        raise ValueError("must have no #fragment (it is never sent)")
    return value


WebhookUrl = Annotated[
    str,
    Field(min_length=1, max_length=MAX_WEBHOOK_URL_LENGTH, examples=["https://hooks.example.com/backup"]),
    AfterValidator(_check_webhook_url),
]


def _every_kind() -> list[NotificationKind]:
    return list(NotificationKind)


class Webhook(_Strict):
    url: WebhookUrl = Field(description="Receives a signed JSON POST for each notification (http or https).")
    events: list[NotificationKind] = Field(
        default_factory=_every_kind,
        min_length=1,
        max_length=len(NotificationKind),
        description="The notifications it receives (default: all of them).",
    )
    enabled: StrictBool = True

    @field_validator("events")
    @classmethod
    def _events_are_unique(cls, value: list[NotificationKind]) -> list[NotificationKind]:
        if len(set(value)) != len(value):
            raise ValueError("each event may be listed once")
        return value


class NotificationSettings(_Strict):
    webhooks: list[Webhook] = Field(default_factory=list, max_length=MAX_WEBHOOKS)
    missing_after_minutes: StrictInt = Field(
        60,
        ge=1,
        le=7 * 24 * 60,
        description="A scheduled backup that has not completed this many minutes after its fire time is reported "
        "missing (backup_missing), once per fire time.",
    )

    @model_validator(mode="after")
    def _urls_are_unique(self) -> NotificationSettings:
        urls = [webhook.url for webhook in self.webhooks]
        duplicates = sorted({url for url in urls if urls.count(url) > 1})
        if duplicates:
            raise ValueError(f"webhook URLs must be unique: {len(duplicates)} listed twice")
        return self

    def subscribers(self, kind: NotificationKind) -> list[str]:
        """The URLs of the enabled webhooks that receive ``kind``."""
        return [webhook.url for webhook in self.webhooks if webhook.enabled and kind in webhook.events]


class SettingsDocument(_Strict):
    retention: RetentionPolicy = RetentionPolicy()
    encryption: EncryptionSettings = EncryptionSettings()
    compression: CompressionSettings = CompressionSettings()
    database: DatabaseSettings = DatabaseSettings()
    verification: VerificationSettings = VerificationSettings()
    restore_limits: RestoreLimits = RestoreLimits()
    exclude: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(default_factory=list, max_length=200)
    notifications: NotificationSettings = NotificationSettings()


Document = ScheduleDocument | SettingsDocument


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as RFC 7396 (JSON merge patch) says: objects merge key by key,
    null removes a key (here: back to its default), anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def missing_sections(model: type[BaseModel], body: dict[str, Any], prefix: str = "") -> list[str]:
    """The fields of ``model`` (and of its sections, recursively) that ``body`` leaves out: a
    replacement must say every one, or it would silently reset them to their defaults."""
    missing = []
    for name, info in model.model_fields.items():
        if name not in body:
            missing.append(f"{prefix}{name}")
            continue
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel) and isinstance(body[name], dict):
            missing += missing_sections(section, body[name], f"{prefix}{name}.")
    return missing


DOCUMENTS: dict[str, type[Document]] = {"schedule": ScheduleDocument, "settings": SettingsDocument}
