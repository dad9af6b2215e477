"""Service configuration, read only from ``BACKUP_*`` environment variables."""

from __future__ import annotations

import base64
import binascii
import sys
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backup_common.engine.database.target import MysqlTarget
from backup_common.paths import ADMIN_PAGE_DIR

ENV_PREFIX = "BACKUP_"


class JwtAlgorithm(StrEnum):
    HS256 = "HS256"
    HS384 = "HS384"
    HS512 = "HS512"
    RS256 = "RS256"
    RS384 = "RS384"
    RS512 = "RS512"

    @property
    def is_symmetric(self) -> bool:
        return self.value.startswith("HS")


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


def _check_mysql_url(value: str) -> str:
    MysqlTarget(value)
    return value


class Settings(BaseSettings):
    """Every variable is documented, with its default, in the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    mysql_url: SecretStr = SecretStr("mysql://root@127.0.0.1:3306/backup_catalog")
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    amqp_exchange: str = Field("backup.events", min_length=1, max_length=200)
    amqp_queue_prefix: str = Field("backup", min_length=1, max_length=100)
    amqp_prefetch: int = Field(8, ge=1, le=1000)
    max_delivery_attempts: int = Field(5, ge=1, le=100)

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8080, ge=0, le=65535)
    # The admin page's static export (`npm run build` in client/), served by the gateway at
    # /admin/backup-recovery. Default: client/out of the checkout the gateway runs from, whatever the
    # working directory; a relative value is taken from the working directory, as every path here.
    admin_page_dir: Path = ADMIN_PAGE_DIR

    # Workers serve only /healthz, /readyz and /metrics, each on its own port.
    worker_host: str = "127.0.0.1"
    database_backup_port: int = Field(8081, ge=0, le=65535)
    file_backup_port: int = Field(8082, ge=0, le=65535)
    verification_port: int = Field(8083, ge=0, le=65535)
    retention_port: int = Field(8084, ge=0, le=65535)

    storage_dir: Path = Path("./var/backups")
    source_mysql_url: SecretStr = SecretStr("mysql://root@127.0.0.1:3306/app")
    uploads_dir: Path = Path("./var/app/uploads")
    configs_dir: Path = Path("./var/app/configs")
    logs_dir: Path = Path("./var/app/logs")
    # Restores into another directory go below this one, and nowhere else.
    restore_dir: Path = Path("./var/restores")
    # Where restore drills load their scratch databases (any database name; its server is what counts);
    # unset: the source server.
    drill_mysql_url: SecretStr | None = None

    jwt_secret: SecretStr | None = None
    jwt_algorithm: JwtAlgorithm = JwtAlgorithm.HS256
    jwt_public_key: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None

    master_key: SecretStr | None = None
    master_key_file: Path | None = None

    outbox_poll_seconds: float = Field(1.0, gt=0, le=60)
    outbox_max_attempts: int = Field(12, ge=1, le=1000)
    lease_seconds: float = Field(60.0, ge=5, le=3600)
    # The retention service: how late a missed schedule firing still runs, how long a backup or a
    # restore may wait for a worker, when a deletion is asked again, how long finished bookkeeping
    # (sent outbox rows, processed message ids, finished leases) is kept.
    schedule_catch_up_minutes: int = Field(60, ge=0, le=7 * 24 * 60)
    pending_timeout_minutes: int = Field(60, ge=1, le=7 * 24 * 60)
    deleting_retry_minutes: int = Field(10, ge=1, le=24 * 60)
    housekeeping_keep_days: int = Field(7, ge=1, le=3650)
    # Webhook notifications (the settings document's `notifications` section says where): the HMAC
    # key they are signed with, how many times and how far apart a delivery is tried (the delay
    # doubles from the first up to an hour), and how long one attempt may take.
    notification_secret: SecretStr | None = None
    notification_max_attempts: int = Field(12, ge=1, le=100)
    notification_retry_seconds: float = Field(10.0, gt=0, le=3600)
    notification_timeout_seconds: float = Field(10.0, gt=0, le=120)
    # Off-site copies (s3://bucket/prefix) in an S3-compatible store: AWS, or another at the endpoint
    # URL. Credentials and region come from the standard AWS variables and files. Local copies of
    # backups copied off-site are removed after local_keep_days (unset: kept as long as the backup).
    offsite_url: str | None = None
    offsite_endpoint_url: str | None = None
    offsite_storage_class: str | None = Field(None, pattern=r"^[A-Z_]+$")
    offsite_part_size_mib: int = Field(16, ge=5, le=5 * 1024)
    offsite_concurrency: int = Field(4, ge=1, le=64)
    offsite_retry_seconds: float = Field(30.0, gt=0, le=3600)
    # Object Lock retention of each copy, in days from the backup's creation, when the bucket has
    # Object Lock; unset: the retention policy's max_age_days, else its keep_daily.
    offsite_lock_days: int | None = Field(None, ge=1, le=36500)
    local_keep_days: int | None = Field(None, ge=1, le=36500)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    log_format: LogFormat = LogFormat.TEXT

    @field_validator("mysql_url", "source_mysql_url")
    @classmethod
    def _mysql_url_is_valid(cls, value: SecretStr) -> SecretStr:
        _check_mysql_url(value.get_secret_value())
        return value

    @field_validator("drill_mysql_url")
    @classmethod
    def _drill_url_is_valid(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_mysql_url(value.get_secret_value())
        return value

    @field_validator("offsite_url")
    @classmethod
    def _offsite_url_is_valid(cls, value: str | None) -> str | None:
        if value is not None:
            offsite_location(value)
        return value

    @field_validator("offsite_endpoint_url")
    @classmethod
    def _offsite_endpoint_is_valid(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
            raise ValueError("must be an http:// or https:// URL, e.g. https://minio.example.com:9000")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url_is_valid(cls, value: SecretStr) -> SecretStr:
        if urlsplit(value.get_secret_value()).scheme not in ("amqp", "amqps"):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (use e.g. `openssl rand -base64 48`)")
        return value

    @field_validator("notification_secret")
    @classmethod
    def _notification_secret_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (use e.g. `openssl rand -base64 48`)")
        return value

    @field_validator("master_key")
    @classmethod
    def _master_key_is_32_bytes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_master_key(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _jwt_key_matches_algorithm(self) -> Settings:
        if self.jwt_algorithm.is_symmetric:
            if self.jwt_public_key:
                raise ValueError(f"{ENV_PREFIX}JWT_PUBLIC_KEY is only used with an RS algorithm")
        elif not self.jwt_public_key:
            raise ValueError(
                f"{ENV_PREFIX}JWT_PUBLIC_KEY is required with {ENV_PREFIX}JWT_ALGORITHM={self.jwt_algorithm}"
            )
        if self.master_key is not None and self.master_key_file is not None:
            raise ValueError(f"set {ENV_PREFIX}MASTER_KEY or {ENV_PREFIX}MASTER_KEY_FILE, not both")
        return self

    @property
    def catalog(self) -> MysqlTarget:
        return MysqlTarget(self.mysql_url.get_secret_value())

    @property
    def source(self) -> MysqlTarget:
        return MysqlTarget(self.source_mysql_url.get_secret_value())

    @property
    def drill_server(self) -> MysqlTarget:
        """The server restore drills load into: BACKUP_DRILL_MYSQL_URL's, else the source's."""
        url = self.drill_mysql_url or self.source_mysql_url
        return MysqlTarget(url.get_secret_value())

    def jwt_verification_key(self) -> str:
        """The key tokens are checked with; raises SettingsError when none is configured."""
        if self.jwt_algorithm.is_symmetric:
            if self.jwt_secret is None:
                raise SettingsError(f"{ENV_PREFIX}JWT_SECRET is required to sign and check admin tokens")
            return self.jwt_secret.get_secret_value()
        assert self.jwt_public_key is not None  # enforced by the model validator
        return self.jwt_public_key

    def load_master_key(self) -> bytes:
        """The 32-byte master key that wraps every backup's data key."""
        if self.master_key is not None:
            return decode_master_key(self.master_key.get_secret_value())
        if self.master_key_file is not None:
            try:
                text = self.master_key_file.read_text().strip()
            except OSError as exc:
                raise SettingsError(f"{ENV_PREFIX}MASTER_KEY_FILE: cannot read: {exc.strerror}") from exc
            try:
                return decode_master_key(text)
            except ValueError as exc:
                raise SettingsError(f"{ENV_PREFIX}MASTER_KEY_FILE: {exc}") from exc
        raise SettingsError(f"{ENV_PREFIX}MASTER_KEY or {ENV_PREFIX}MASTER_KEY_FILE is required")


def offsite_location(url: str) -> tuple[str, str]:
    """The bucket and key prefix (no slashes at either end; may be empty) of ``s3://bucket/prefix``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError("must be an s3://bucket/prefix URL (the prefix may be empty)")
    if parts.query or parts.fragment:
        raise ValueError("must be an s3://bucket/prefix URL, without a query or fragment")
    return parts.netloc, parts.path.strip("/")


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable."""


def decode_master_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("must be base64 of 32 random bytes (e.g. `openssl rand -base64 32`)") from exc
    if len(key) != 32:
        raise ValueError(f"must decode to 32 bytes, got {len(key)} (e.g. `openssl rand -base64 32`)")
    return key


def describe_validation_error(error: ValidationError) -> str:
    """One line per invalid variable, named as the operator sets it."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "\n".join(lines)


def load_settings() -> Settings:
    """Reads the environment; on invalid settings, stops the process naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        sys.stderr.write("invalid configuration:\n" + describe_validation_error(exc) + "\n")
        raise SystemExit(2) from None
