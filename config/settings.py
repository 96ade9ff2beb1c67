"""careloop's settings, read from the environment once and validated at start.

Every setting is an environment variable; the README's configuration table lists them all.
Secrets are ``SecretStr`` so they never show up when settings are printed or logged.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///careloop.db"
"""Embedded default: a SQLite file in the working directory."""

DEFAULT_RULES_FILE = Path(str(files("careloop.config") / "rules.yaml"))
"""The routing rules shipped with careloop."""

DEFAULT_POLICY_FILE = Path(str(files("careloop.config") / "policy.yaml"))
"""The need-to-know policy shipped with careloop: what each role may see of an event."""

MIN_SECRET_KEY_LENGTH = 32
"""Characters a CARELOOP_SECRET_KEY needs at least (e.g. ``secrets.token_urlsafe(32)`` gives 43)."""

MIN_ADMIN_KEY_LENGTH = 32
"""Characters a CARELOOP_ADMIN_KEY needs at least: it reaches every notebook."""

MAKE_A_SECRET = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"

TWILIO_SID_PATTERN = r"AC[0-9a-f]{32}"
"""A Twilio Account SID: ``AC`` and 32 lower-case hex digits."""

TWILIO_TOKEN_PATTERN = r"[0-9a-f]{32}"
"""A Twilio auth token: 32 lower-case hex digits."""

DEFAULT_WEBHOOK_SECRET_GRACE = 24 * 3600.0
"""Seconds a source's old webhook secret still verifies after a rotation (24 hours)."""

DEFAULT_RATE_LIMITS = {
    "reads": "600/minute;20/second",
    "writes": "120/minute;10/second",
    "member_links": "60/minute",
    "webhooks": "600/minute",
}
"""Requests allowed per key (reads, writes) or per client address (member links, webhooks)."""

DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Seconds between attempts (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h — Svix's schedule): eight
attempts over about 27 hours, so an outage of minutes or hours dead-letters nothing."""

DEFAULT_WEBHOOK_DISABLE_AFTER = 5 * 86400.0
"""Seconds an outbound webhook endpoint may fail without one success before it is disabled."""

DEFAULT_REMINDER_OFFSETS = (24 * 60, 60)
"""Minutes before each check-in occurrence its attendees are reminded (24 h and 1 h)."""

MAX_REMINDER_OFFSET_MINUTES = 7 * 24 * 60
"""The earliest a reminder may go: a week before its check-in."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"`` → seconds."""
    text = text.strip().lower()
    try:
        if text and text[-1] in _UNITS:
            return float(text[:-1]) * _UNITS[text[-1]]
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 2h") from None


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    # A refused value is never echoed: it may be a secret.
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, hide_input_in_errors=True)

    database_url: str = Field(DEFAULT_DATABASE_URL, validation_alias=_env("DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL"))
    queue_prefix: str = Field("careloop", validation_alias=_env("CARELOOP_QUEUE_PREFIX"))
    admin_key: SecretStr | None = Field(None, validation_alias=_env("CARELOOP_ADMIN_KEY"))
    metrics_token: SecretStr | None = Field(None, validation_alias=_env("CARELOOP_METRICS_TOKEN"))
    public_url: str = Field("http://127.0.0.1:8000", validation_alias=_env("CARELOOP_PUBLIC_URL"))
    rules_file: Path = Field(DEFAULT_RULES_FILE, validation_alias=_env("CARELOOP_RULES"))
    policy_file: Path = Field(DEFAULT_POLICY_FILE, validation_alias=_env("CARELOOP_POLICY"))
    secret_key: SecretStr | None = Field(None, validation_alias=_env("CARELOOP_SECRET_KEY"))
    link_ttl_days: float = Field(30.0, gt=0, le=366, validation_alias=_env("CARELOOP_LINK_TTL_DAYS"))
    outbox_dir: Path = Field(Path("careloop-outbox"), validation_alias=_env("CARELOOP_OUTBOX_DIR"))

    twilio_account_sid: str | None = Field(None, validation_alias=_env("TWILIO_ACCOUNT_SID"))
    twilio_auth_token: SecretStr | None = Field(None, validation_alias=_env("TWILIO_AUTH_TOKEN"))
    twilio_from: str | None = Field(None, validation_alias=_env("TWILIO_FROM"))
    twilio_api_url: str | None = Field(None, validation_alias=_env("TWILIO_API_URL"))

    smtp_host: str | None = Field(None, validation_alias=_env("SMTP_HOST"))
    smtp_port: int = Field(587, validation_alias=_env("SMTP_PORT"))
    smtp_username: str | None = Field(None, validation_alias=_env("SMTP_USERNAME"))
    smtp_password: SecretStr | None = Field(None, validation_alias=_env("SMTP_PASSWORD"))
    smtp_starttls: bool = Field(True, validation_alias=_env("SMTP_STARTTLS"))
    mail_from: str = Field("careloop@localhost", validation_alias=_env("MAIL_FROM"))

    provider_timeout: float = Field(10.0, gt=0, validation_alias=_env("CARELOOP_PROVIDER_TIMEOUT"))
    retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        DEFAULT_RETRY_SCHEDULE, validation_alias=_env("CARELOOP_RETRY_SCHEDULE")
    )
    claim_timeout: float = Field(90.0, gt=0, validation_alias=_env("CARELOOP_CLAIM_TIMEOUT"))
    relay_interval: float = Field(5.0, gt=0, validation_alias=_env("CARELOOP_RELAY_INTERVAL"))

    admin_email: str | None = Field(None, validation_alias=_env("CARELOOP_ADMIN_EMAIL"))
    allow_private_webhooks: bool = Field(False, validation_alias=_env("CARELOOP_ALLOW_PRIVATE_WEBHOOKS"))
    webhook_disable_after: Annotated[float, NoDecode] = Field(
        DEFAULT_WEBHOOK_DISABLE_AFTER, validation_alias=_env("CARELOOP_WEBHOOK_DISABLE_AFTER")
    )

    # --- reminders (issue 12) ---
    reminder_offsets: Annotated[tuple[int, ...], NoDecode] = Field(
        DEFAULT_REMINDER_OFFSETS, validation_alias=_env("CARELOOP_REMINDER_OFFSETS")
    )

    @field_validator("reminder_offsets", mode="before")
    @classmethod
    def _parse_reminder_offsets(cls, value):
        wrong = ValueError(
            "CARELOOP_REMINDER_OFFSETS must list at most 5 times before a check-in, each from 1m "
            "to 7d, such as 24h,1h (empty: no reminders)"
        )
        try:
            if isinstance(value, str):
                value = [parse_duration(part) / 60 for part in value.split(",") if part.strip()]
            minutes = tuple(sorted({int(round(float(v))) for v in value}, reverse=True))
        except (TypeError, ValueError):
            raise wrong from None
        if len(minutes) > 5 or any(not 1 <= m <= MAX_REMINDER_OFFSET_MINUTES for m in minutes):
            raise wrong
        return minutes

    @field_validator("webhook_disable_after", mode="before")
    @classmethod
    def _parse_disable_after(cls, value):
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
        if seconds <= 0:
            raise ValueError("CARELOOP_WEBHOOK_DISABLE_AFTER must be a positive duration such as 5d")
        return seconds
    webhook_secret_grace: Annotated[float, NoDecode] = Field(
        DEFAULT_WEBHOOK_SECRET_GRACE, ge=0, validation_alias=_env("CARELOOP_WEBHOOK_SECRET_GRACE")
    )
    rate_limit_reads: str = Field(
        DEFAULT_RATE_LIMITS["reads"], validation_alias=_env("CARELOOP_RATE_LIMIT_READS")
    )
    rate_limit_writes: str = Field(
        DEFAULT_RATE_LIMITS["writes"], validation_alias=_env("CARELOOP_RATE_LIMIT_WRITES")
    )
    rate_limit_member_links: str = Field(
        DEFAULT_RATE_LIMITS["member_links"], validation_alias=_env("CARELOOP_RATE_LIMIT_MEMBER_LINKS")
    )
    rate_limit_webhooks: str = Field(
        DEFAULT_RATE_LIMITS["webhooks"], validation_alias=_env("CARELOOP_RATE_LIMIT_WEBHOOKS")
    )
    trusted_proxies: int = Field(0, ge=0, le=5, validation_alias=_env("CARELOOP_TRUSTED_PROXIES"))
    """Reverse proxies in front of careloop whose X-Forwarded-For/-Proto are believed (0: none)."""

    @field_validator("webhook_secret_grace", mode="before")
    @classmethod
    def _parse_grace(cls, value):
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator(
        "rate_limit_reads", "rate_limit_writes", "rate_limit_member_links", "rate_limit_webhooks"
    )
    @classmethod
    def _rate_limit(cls, value: str, info) -> str:
        from limits import parse_many  # the rate-limit syntax Flask-Limiter reads

        name = "CARELOOP_" + info.field_name.upper()
        try:
            if not parse_many(value):
                raise ValueError(value)
        except ValueError:
            raise ValueError(
                f"{name} must be limits such as 600/minute or 120/minute;10/second, not {value!r}"
            ) from None
        return value

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value):
        if isinstance(value, str):
            value = [parse_duration(part) for part in value.split(",") if part.strip()]
        delays = tuple(float(v) for v in value)
        if not 1 <= len(delays) <= 50 or any(d < 0 for d in delays):
            raise ValueError("CARELOOP_RETRY_SCHEDULE must list 1 to 50 delays such as 5s,5m,30m,2h")
        return delays

    @property
    def max_attempts(self) -> int:
        """Attempts per delivery (per manual retry): the first, and one per scheduled retry."""
        return len(self.retry_schedule) + 1

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("secret_key", "admin_key", mode="before")
    @classmethod
    def _long_enough(cls, value, info):
        name, least = {
            "secret_key": ("CARELOOP_SECRET_KEY", MIN_SECRET_KEY_LENGTH),
            "admin_key": ("CARELOOP_ADMIN_KEY", MIN_ADMIN_KEY_LENGTH),
        }[info.field_name]
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is None:
            return None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} is set but empty; unset it or {MAKE_A_SECRET}")
        if len(text) < least or text != text.strip() or not text.isprintable():
            raise ValueError(
                f"{name} must be at least {least} characters, printable, without surrounding "
                f"spaces ({MAKE_A_SECRET})"
            )
        return value

    @field_validator("twilio_account_sid", "twilio_auth_token", mode="before")
    @classmethod
    def _twilio_shape(cls, value, info):
        # Only the shape of what is set: a channel without all three writes to the outbox.
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text in (None, ""):
            return None
        name, pattern, shape = {
            "twilio_account_sid": ("TWILIO_ACCOUNT_SID", TWILIO_SID_PATTERN, "AC and 32 hex digits"),
            "twilio_auth_token": ("TWILIO_AUTH_TOKEN", TWILIO_TOKEN_PATTERN, "32 hex digits"),
        }[info.field_name]
        if not isinstance(text, str) or not re.fullmatch(pattern, text):
            raise ValueError(f"{name} must be {shape}, as Twilio's console shows it")
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_postgres(cls, value: str) -> str:
        # Heroku-style URLs say postgres://; SQLAlchemy wants a driver name.
        if value.startswith("postgres://"):
            value = "postgresql+psycopg://" + value[len("postgres://") :]
        elif value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value[len("postgresql://") :]
        return value

    @classmethod
    def from_values(cls, **values) -> Settings:
        """Settings from these values and the defaults only; the environment is not read
        (the demo must not pick up a production SMTP_HOST, say)."""
        return _SettingsWithoutEnvironment(**values)

    @property
    def twilio_configured(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_from)

    @property
    def smtp_configured(self) -> bool:
        return bool(self.smtp_host)

    @property
    def uses_redis(self) -> bool:
        return bool(self.redis_url)


class _SettingsWithoutEnvironment(Settings):
    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **sources):
        return (init_settings,)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
