"""Settings: the only place the environment and `.env` are read."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import socket
import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger("blog.config")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./blog.db"
MIN_SECRET_KEY_LENGTH = 32
# A key of 32 characters drawn from only a few symbols ("aaaa...", "abab...") is guessable;
# secrets.token_urlsafe(48) has ~40 distinct characters, a long passphrase well over 10.
MIN_SECRET_KEY_DISTINCT = 10
RATE_LIMIT_PATTERN = re.compile(r"^\s*\d+\s*/\s*(second|minute|hour)\s*$")


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message says why in one line."""


DATABASE_URL_FORMS = (
    "must start with postgresql://, postgres://, postgresql+asyncpg:// (PostgreSQL) "
    "or sqlite:///, sqlite+aiosqlite:/// (a SQLite file)"
)
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
# Shown as *** in messages about the configuration.
SECRET_SETTINGS = frozenset(
    {"secret_key", "smtp_password", "first_admin_password", "metrics_token"}
)
PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def normalize_database_url(url: str) -> str:
    """Map every accepted PostgreSQL/SQLite spelling onto its async driver."""
    url = url.strip()
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    for prefix in ("sqlite+aiosqlite://", "sqlite://"):
        if url.startswith(prefix):
            return "sqlite+aiosqlite://" + url[len(prefix) :]
    raise ConfigError(f"DATABASE_URL {DATABASE_URL_FORMS}")


def describe_invalid_settings(exc: ValidationError) -> str:
    """Every problem of a configuration, on one line: the variable, the value it was given
    (secrets masked, passwords cut out of URLs) and what it accepts."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule across variables says which ones itself
            problems.append(message)
            continue
        name = str(error["loc"][0])
        value = error.get("input")
        if name in SECRET_SETTINGS:
            shown = "***"
        elif isinstance(value, str):
            shown = repr(PASSWORD_IN_URL.sub(r"\1***@", value))
        else:
            shown = repr(value)
        problems.append(f"{name.upper()}={shown}: {message}")
    return "; ".join(problems)


def display_url(url: str) -> str:
    """A database or Redis URL without its password, fit for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        # URL.set(password=None) means "unchanged"; the named tuple's _replace drops it.
        return make_url(url)._replace(password=None).render_as_string(hide_password=False)
    except Exception:
        return "<unparsable URL>"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for PostgreSQL and in-memory SQLite."""
    if not url.startswith("sqlite+aiosqlite:///"):
        return None
    path = url[len("sqlite+aiosqlite:///") :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


class Settings(BaseSettings):
    """Every knob of the service; see the README's configuration table."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    migrate_on_start: bool = False
    redis_url: str | None = None
    secret_key: str | None = None
    environment: Literal["development", "production", "test"] = "development"
    docs_enabled: bool = True
    access_token_expire_minutes: int = Field(default=30, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = []
    rate_limit_enabled: bool = True
    rate_limit_read: str = "300/minute"
    rate_limit_write: str = "60/minute"
    rate_limit_login: str = "10/minute"
    rate_limit_login_account: str = "20/hour"
    ws_max_sockets_per_user: int = Field(default=20, ge=1)
    ws_max_sockets_per_ip: int = Field(default=100, ge=1)
    cache_ttl_seconds: int = Field(default=300, ge=0)
    cache_max_entries: int = Field(default=10_000, ge=1)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "blog@localhost"
    smtp_timeout_seconds: float = 5.0
    notify_email: str | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "text"] | None = None  # unset: text at a terminal, else json
    first_admin_username: str | None = None
    first_admin_email: str | None = None
    first_admin_password: str | None = None
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    database_pooler: Literal["none", "pgbouncer"] = "none"
    forwarded_allow_ips: Annotated[list[str], NoDecode] = []
    allowed_hosts: Annotated[list[str], NoDecode] = ["*"]
    metrics_token: str | None = None
    request_head_timeout_seconds: float = Field(default=10.0, gt=0)
    request_body_timeout_seconds: float = Field(default=30.0, gt=0)
    web_concurrency: int = Field(default=1, ge=1)
    instance_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    public_base_url: str | None = None

    @field_validator("database_url")
    @classmethod
    def _normalize_database_url(cls, value: str) -> str:
        try:
            return normalize_database_url(value)
        except ConfigError:
            raise ValueError(DATABASE_URL_FORMS) from None

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.strip().startswith(REDIS_URL_SCHEMES):
            raise ValueError(
                "must start with redis://, rediss:// or unix:// (e.g. redis://localhost:6379/0)"
            )
        return value.strip() if value is not None else None

    @field_validator(
        "redis_url",
        "secret_key",
        "smtp_host",
        "notify_email",
        "metrics_token",
        "log_format",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("public_base_url", mode="before")
    @classmethod
    def _base_url(cls, value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            return None
        url = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", url):
            raise ValueError("must be an http:// or https:// URL such as https://blog.example.com")
        return url

    @field_validator("cors_origins", "forwarded_allow_ips", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _only_ip_addresses(cls, value: list[str]) -> list[str]:
        """Proxies are IP addresses or networks; anything else (`*`, a name) is ignored, so a
        typo can never make every peer's X-Forwarded-For believed."""
        kept = []
        for entry in value:
            try:
                kept.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                logger.warning("FORWARDED_ALLOW_IPS: %r is not an IP address; ignored", entry)
        return kept

    @field_validator("allowed_hosts")
    @classmethod
    def _lower_case_hosts(cls, value: list[str]) -> list[str]:
        return [host.lower() for host in value] or ["*"]

    @field_validator(
        "rate_limit_read", "rate_limit_write", "rate_limit_login", "rate_limit_login_account"
    )
    @classmethod
    def _rate_limit_form(cls, value: str) -> str:
        if not RATE_LIMIT_PATTERN.match(value):
            raise ValueError("must look like N/second, N/minute or N/hour")
        return value.replace(" ", "")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
            raise ValueError("must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG")
        return value

    @model_validator(mode="after")
    def _production_needs_secret(self) -> Settings:
        if self.environment != "production":
            return self
        if self.secret_key is None or len(self.secret_key) < MIN_SECRET_KEY_LENGTH:
            given = (
                "it is unset"
                if self.secret_key is None
                else f"it has {len(self.secret_key)} characters"
            )
            raise ValueError(
                f"ENVIRONMENT=production needs a SECRET_KEY of {MIN_SECRET_KEY_LENGTH}+ characters "
                f"({given})"
            )
        distinct = len(set(self.secret_key))
        if distinct < MIN_SECRET_KEY_DISTINCT:
            raise ValueError(
                f"SECRET_KEY has too little variety ({distinct} distinct characters, "
                f"{MIN_SECRET_KEY_DISTINCT}+ needed) to be hard to guess; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def jwt_secret(self) -> str:
        """The signing key: configured, or generated once and shared through a file."""
        if self.secret_key is None:
            self.secret_key = load_or_create_secret_key(self.secret_key_path())
        return self.secret_key

    def secret_key_path(self) -> Path:
        db_file = sqlite_path(self.database_url)
        directory = db_file.parent if db_file is not None else Path.cwd()
        return directory / ".secret_key"


def load_or_create_secret_key(path: Path) -> str:
    """Read the key file, creating it (mode 0600) if absent; safe when workers race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it right now
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.02)
        raise ConfigError(f"{path} is empty; delete it or set SECRET_KEY") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    logger.warning(
        "SECRET_KEY is not set: generated one into %s; set SECRET_KEY in production", path
    )
    return key


@lru_cache
def get_settings() -> Settings:
    return Settings()
