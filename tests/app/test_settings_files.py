"""Settings from files: DISTILL_<NAME>_FILE (Docker secrets), and the database password kept out of the URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from app.settings import Settings, SettingsFileError, without_password


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name in ("DISTILL_DATABASE_URL", "DISTILL_DATABASE_PASSWORD", "DISTILL_AUTH", "DISTILL_ADMINS", "DISTILL_PORT"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name + "_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the working directory


def secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_any_setting_can_come_from_a_file_without_its_trailing_newline(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_AUTH_FILE", str(secret(tmp_path, "auth", "on\n")))
    monkeypatch.setenv("DISTILL_ADMINS_FILE", str(secret(tmp_path, "admins", "alice, bob\r\n")))
    monkeypatch.setenv("distill_port_file", str(secret(tmp_path, "port", "8123")))  # names are case-insensitive
    settings = Settings()
    assert settings.auth == "on" and settings.admin_names == {"alice", "bob"} and settings.port == 8123


def test_a_value_read_from_a_file_is_validated_like_any_other(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_AUTH_FILE", str(secret(tmp_path, "auth", "maybe\n")))
    with pytest.raises(ValidationError, match="auth"):
        Settings()


def test_a_missing_file_is_an_error_naming_the_variable_and_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "postgres_password"
    monkeypatch.setenv("DISTILL_DATABASE_PASSWORD_FILE", str(missing))
    with pytest.raises(SettingsFileError, match=f"DISTILL_DATABASE_PASSWORD_FILE={missing}: cannot read the file"):
        Settings()


def test_a_setting_given_both_ways_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_AUTH", "off")
    monkeypatch.setenv("DISTILL_AUTH_FILE", str(secret(tmp_path, "auth", "on\n")))
    with pytest.raises(SettingsFileError, match="both DISTILL_AUTH and DISTILL_AUTH_FILE are set"):
        Settings()


def test_the_database_password_goes_into_the_url_quoted(tmp_path, monkeypatch):
    password = "p@ss:w/rd%?#"  # every character that means something in a URL
    monkeypatch.setenv("DISTILL_DATABASE_URL", "postgresql://distill@postgres:5432/distill")
    monkeypatch.setenv("DISTILL_DATABASE_PASSWORD_FILE", str(secret(tmp_path, "postgres_password", password + "\n")))
    settings = Settings()
    url = make_url(settings.effective_database_url)
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg", "distill", password, "postgres", 5432, "distill"
    )
    assert password not in repr(settings)  # not in logs of the settings object


def test_a_database_password_without_a_url_or_beside_one_in_the_url_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATABASE_PASSWORD", "secret")
    with pytest.raises(ValidationError, match="database_url is empty"):
        Settings()
    monkeypatch.setenv("DISTILL_DATABASE_URL", "postgresql://distill:other@postgres/distill")
    with pytest.raises(ValidationError, match="has a password too"):
        Settings()


def test_without_a_password_the_url_is_used_as_given(monkeypatch):
    monkeypatch.setenv("DISTILL_DATABASE_URL", "postgresql://distill:inline@postgres/distill")
    assert Settings().effective_database_url == "postgresql+psycopg://distill:inline@postgres/distill"


def test_a_file_variable_in_dot_env_is_read_too(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(f"DISTILL_AUTH_FILE={secret(tmp_path, 'auth', 'on')}\n")  # the working directory's
    assert Settings().auth == "on"
    (tmp_path / ".env").write_text(f"DISTILL_AUTH=off\nDISTILL_AUTH_FILE={tmp_path / 'auth'}\n")
    with pytest.raises(SettingsFileError, match="both DISTILL_AUTH and DISTILL_AUTH_FILE"):
        Settings()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://distill:s3cr%40t@db:5432/distill", "postgresql+psycopg://distill:***@db:5432/distill"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("postgresql://distill@db/distill", "postgresql://distill@db/distill"),  # no password: unchanged
        ("sqlite:////srv/distill/distill.db", "sqlite:////srv/distill/distill.db"),
    ],
)
def test_a_printed_url_never_shows_its_password(url, shown):
    assert without_password(url) == shown


def test_distill_up_prints_the_database_url_without_the_password_from_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATABASE_URL", "postgresql+psycopg://distill@db:5432/distill")
    monkeypatch.setenv("DISTILL_DATABASE_PASSWORD_FILE", str(secret(tmp_path, "pw", "n0t-in-logs\n")))
    url = Settings().effective_database_url
    assert make_url(url).password == "n0t-in-logs"  # what the engine connects with
    assert "n0t-in-logs" not in without_password(url) and "***" in without_password(url)
