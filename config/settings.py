"""careloop's settings, read from the environment once and validated at start.

Every setting is an environment variable; the README's configuration table lists them all.
Secrets are ``SecretStr`` so they never show up when settings are printed or logged.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///careloop.db"
"""Embedded default: a SQLite file in the working directory."""

DEFAULT_RULES_FILE = Path(str(files("careloop.config") / "rules.yaml"))
"""The routing rules shipped with careloop."""


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str = Field(DEFAULT_DATABASE_URL, validation_alias=_env("DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL"))
    queue_prefix: str = Field("careloop", validation_alias=_env("CARELOOP_QUEUE_PREFIX"))
    admin_key: SecretStr | None = Field(None, validation_alias=_env("CARELOOP_ADMIN_KEY"))
    public_url: str = Field("http://127.0.0.1:8000", validation_alias=_env("CARELOOP_PUBLIC_URL"))
    rules_file: Path = Field(DEFAULT_RULES_FILE, validation_alias=_env("CARELOOP_RULES"))
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
    max_attempts: int = Field(5, ge=1, le=50, validation_alias=_env("CARELOOP_MAX_ATTEMPTS"))
    retry_base: float = Field(5.0, ge=0, validation_alias=_env("CARELOOP_RETRY_BASE"))
    retry_max: float = Field(900.0, ge=0, validation_alias=_env("CARELOOP_RETRY_MAX"))
    claim_timeout: float = Field(90.0, gt=0, validation_alias=_env("CARELOOP_CLAIM_TIMEOUT"))
    relay_interval: float = Field(5.0, gt=0, validation_alias=_env("CARELOOP_RELAY_INTERVAL"))

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

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
