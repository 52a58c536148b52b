"""Settings: URL normalisation, the secret key rules, list and rate-limit parsing."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from config import ConfigError, Settings, normalize_database_url, sqlite_path

LONG_SECRET = "0123456789abcdefghijklmnopqrstuv"  # 32 characters, 32 distinct


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable from the developer's shell (or a .env in the cwd) leaks into a test."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


# --- DATABASE_URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/blog", "postgresql+asyncpg://u:p@db:5432/blog"),
        ("postgresql://u:p@db:5432/blog", "postgresql+asyncpg://u:p@db:5432/blog"),
        ("postgresql+asyncpg://u:p@db/blog", "postgresql+asyncpg://u:p@db/blog"),
        ("postgresql://db/blog?sslmode=require", "postgresql+asyncpg://db/blog?sslmode=require"),
        ("  postgres://db/blog  ", "postgresql+asyncpg://db/blog"),
        ("sqlite+aiosqlite:///./blog.db", "sqlite+aiosqlite:///./blog.db"),
        ("sqlite+aiosqlite:////var/data/blog.db", "sqlite+aiosqlite:////var/data/blog.db"),
        ("sqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
    ],
)
def test_database_url_normalisation(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    assert make(database_url=given).database_url == expected
    assert normalize_database_url(given) == expected
    monkeypatch.setenv("DATABASE_URL", given)
    assert make().database_url == expected


def test_database_url_default_and_kind() -> None:
    default = make()
    assert default.database_url == "sqlite+aiosqlite:///./blog.db"
    assert default.is_sqlite
    assert not make(database_url="postgres://db/blog").is_sqlite


@pytest.mark.parametrize("url", ["mysql://db/blog", "blog.db", "", "http://db"])
def test_database_url_unknown_scheme_is_refused(url: str) -> None:
    with pytest.raises((ValidationError, ConfigError)):
        make(database_url=url)


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite+aiosqlite:///./data/blog.db") == Path("./data/blog.db")
    assert sqlite_path("sqlite+aiosqlite:////abs/blog.db") == Path("/abs/blog.db")
    assert sqlite_path("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_path("postgresql+asyncpg://db/blog") is None


# --- SECRET_KEY ----------------------------------------------------------------------------------


def test_production_refuses_a_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        make(environment="production")
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        make()
    monkeypatch.setenv("SECRET_KEY", "   ")  # blank is missing
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        make()


def test_production_refuses_a_short_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        make(environment="production", secret_key="s" * 31)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", "short")
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        make()


@pytest.mark.parametrize(
    "key", ["a" * 32, "ab" * 40, "secret" * 8, "pass1234" * 6, "0123456789" * 4]
)
def test_production_refuses_a_long_secret_with_too_little_variety(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    distinct = len(set(key))
    if distinct >= 10:
        make(environment="production", secret_key=key)  # ten distinct characters are enough
        return
    with pytest.raises(ValidationError, match="SECRET_KEY has too little variety") as refused:
        make(environment="production", secret_key=key)
    assert f"({distinct} distinct characters, 10+ needed)" in str(refused.value)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", key)
    with pytest.raises(ValidationError, match="too little variety"):
        make()
    # Outside production any key is accepted (tests and local runs use simple ones).
    assert make(environment="development").jwt_secret == key


def test_production_accepts_a_long_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = make(environment="production", secret_key=LONG_SECRET)
    assert settings.jwt_secret == LONG_SECRET
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", LONG_SECRET + "x")
    assert make().jwt_secret == LONG_SECRET + "x"
    assert not list(tmp_path.rglob(".secret_key"))


def test_development_generates_and_reuses_a_key_file(tmp_path: Path) -> None:
    database = tmp_path / "data" / "blog.db"
    url = f"sqlite+aiosqlite:///{database}"
    first = make(database_url=url)
    assert first.secret_key is None
    key = first.jwt_secret
    key_file = tmp_path / "data" / ".secret_key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == key
    assert len(key) >= 32
    assert first.jwt_secret == key  # stable within one process

    modified = key_file.stat().st_mtime_ns
    second = make(database_url=url)
    assert second.jwt_secret == key  # another worker or a restart shares it
    assert key_file.stat().st_mtime_ns == modified

    elsewhere = make(database_url=f"sqlite+aiosqlite:///{tmp_path / 'other' / 'blog.db'}")
    assert elsewhere.jwt_secret != key
    assert stat.S_IMODE((tmp_path / "other" / ".secret_key").stat().st_mode) == 0o600


def test_development_key_file_beside_the_working_directory_for_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_KEY", "")  # empty means unset
    settings = make(database_url="postgresql://db/blog")
    key = settings.jwt_secret
    assert (tmp_path / ".secret_key").read_text().strip() == key
    assert stat.S_IMODE((tmp_path / ".secret_key").stat().st_mode) == 0o600


def test_an_existing_key_file_is_used(tmp_path: Path) -> None:
    (tmp_path / ".secret_key").write_text("pre-existing-key-0123456789abcdefghij\n")
    os.chmod(tmp_path / ".secret_key", 0o600)
    settings = make(database_url=f"sqlite+aiosqlite:///{tmp_path / 'blog.db'}")
    assert settings.jwt_secret == "pre-existing-key-0123456789abcdefghij"


def test_a_configured_secret_writes_no_file(tmp_path: Path) -> None:
    settings = make(database_url=f"sqlite+aiosqlite:///{tmp_path / 'blog.db'}", secret_key="k1")
    assert settings.jwt_secret == "k1"
    assert not (tmp_path / ".secret_key").exists()


# --- CORS_ORIGINS --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://a.example", ["https://a.example"]),
        ("https://a.example,https://b.example", ["https://a.example", "https://b.example"]),
        (" https://a.example , https://b.example ,, ", ["https://a.example", "https://b.example"]),
        ("*", ["*"]),
        ("", []),
    ],
)
def test_cors_origins_split_on_commas(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: list[str]
) -> None:
    assert make(cors_origins=given).cors_origins == expected
    monkeypatch.setenv("CORS_ORIGINS", given)
    assert make().cors_origins == expected


def test_cors_origins_default_is_empty() -> None:
    assert make().cors_origins == []
    assert make(cors_origins=["https://x.example"]).cors_origins == ["https://x.example"]


# --- RATE_LIMIT_* --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["rate_limit_read", "rate_limit_write", "rate_limit_login"])
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("5/second", "5/second"),
        ("60/minute", "60/minute"),
        ("1000/hour", "1000/hour"),
        (" 7 / minute ", "7/minute"),
    ],
)
def test_rate_limit_format_accepted(
    monkeypatch: pytest.MonkeyPatch, field: str, given: str, expected: str
) -> None:
    assert getattr(make(**{field: given}), field) == expected
    monkeypatch.setenv(field.upper(), given)
    assert getattr(make(), field) == expected


@pytest.mark.parametrize("field", ["rate_limit_read", "rate_limit_write", "rate_limit_login"])
@pytest.mark.parametrize(
    "given", ["10/day", "10", "minute", "ten/minute", "10/minutes", "-1/minute", "1.5/second", ""]
)
def test_rate_limit_format_refused(monkeypatch: pytest.MonkeyPatch, field: str, given: str) -> None:
    with pytest.raises(ValidationError):
        make(**{field: given})
    monkeypatch.setenv(field.upper(), given)
    with pytest.raises(ValidationError):
        make()


def test_rate_limit_defaults() -> None:
    settings = make()
    assert settings.rate_limit_enabled is True
    assert settings.rate_limit_read == "300/minute"
    assert settings.rate_limit_write == "60/minute"
    assert settings.rate_limit_login == "10/minute"
    assert settings.rate_limit_login_account == "20/hour"
    with pytest.raises(ValidationError):
        make(rate_limit_login_account="20/day")


# --- proxies, hosts, metrics ---------------------------------------------------------------------


def test_no_proxy_is_believed_by_default_and_non_addresses_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert make().forwarded_allow_ips == []
    given = "10.0.0.1, not-an-ip, *, 172.16.0.0/12, ::1, nginx, /run/nginx.sock"
    assert make(forwarded_allow_ips=given).forwarded_allow_ips == [
        "10.0.0.1/32",
        "172.16.0.0/12",
        "::1/128",
    ]
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    assert make().forwarded_allow_ips == []


def test_allowed_hosts_and_metrics_token(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make()
    assert settings.allowed_hosts == ["*"]
    assert settings.metrics_token is None
    assert settings.request_body_timeout_seconds == 30.0
    monkeypatch.setenv("ALLOWED_HOSTS", "Blog.Example.com, *.blog.example.com")
    monkeypatch.setenv("METRICS_TOKEN", "")  # empty means unset
    settings = make()
    assert settings.allowed_hosts == ["blog.example.com", "*.blog.example.com"]
    assert settings.metrics_token is None
    monkeypatch.setenv("ALLOWED_HOSTS", "")
    assert make().allowed_hosts == ["*"]


# --- PUBLIC_BASE_URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://blog.example.com", "https://blog.example.com"),
        (" https://blog.example.com/ ", "https://blog.example.com"),
        ("http://127.0.0.1:8000/blog/", "http://127.0.0.1:8000/blog"),
        ("", None),
    ],
)
def test_public_base_url_accepted(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str | None
) -> None:
    assert make(public_base_url=given).public_base_url == expected
    monkeypatch.setenv("PUBLIC_BASE_URL", given)
    assert make().public_base_url == expected


@pytest.mark.parametrize(
    "given",
    ["blog.example.com", "ftp://x.example", "https://", "https://x.example/?q=1", "https://a b"],
)
def test_public_base_url_refused(given: str) -> None:
    with pytest.raises(ValidationError):
        make(public_base_url=given)


def test_public_base_url_default_is_unset() -> None:
    assert make().public_base_url is None
