"""The service's one `Settings` object, read from `DISTILL_*` environment variables (or `.env`).

Any setting may instead be read from a file: `DISTILL_<NAME>_FILE=/run/secrets/x` sets `<NAME>` to the
file's text (one trailing newline dropped), as Docker secrets are passed. Setting both is an error.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core_distill.paths import distill_home

DATA_FOLDER = "data"  # under `home`: the one readable root in team mode when DISTILL_ALLOWED_PATHS is empty


ENV_PREFIX = "DISTILL_"
FILE_SUFFIX = "_FILE"


def _default_home() -> Path:
    return distill_home()  # the engine's caches and rebuilds go there too (core_distill.paths)


class SettingsFileError(ValueError):
    """A `DISTILL_<NAME>_FILE` variable that cannot be used: unreadable file, or `DISTILL_<NAME>` set too."""


class FileVariablesSource(PydanticBaseSettingsSource):
    """`DISTILL_<NAME>_FILE`: the setting's value is the named file's text (Docker and compose secrets).
    The variable is read from the environment, else from `.env` (the variables of `dotenv`)."""

    def __init__(self, settings_cls: type[BaseSettings], dotenv: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.dotenv_vars = dict(getattr(dotenv, "env_vars", {}))

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        # names are case-insensitive here, as for the other sources; the environment wins over .env
        environ = {key.upper(): value for key, value in [*self.dotenv_vars.items(), *os.environ.items()] if value}
        values: dict[str, Any] = {}
        for name in self.settings_cls.model_fields:
            variable = f"{ENV_PREFIX}{name.upper()}"
            path = environ.get(variable + FILE_SUFFIX, "")
            if not path:
                continue
            if environ.get(variable):
                raise SettingsFileError(f"both {variable} and {variable}{FILE_SUFFIX} are set: set only one")
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise SettingsFileError(
                    f"{variable}{FILE_SUFFIX}={path}: cannot read the file ({exc.strerror or exc})"
                ) from None
            values[name] = text.removesuffix("\n").removesuffix("\r")
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", env_ignore_empty=True, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # a _FILE variable ranks with the environment: above .env, below explicit arguments
        return (
            init_settings,
            env_settings,
            FileVariablesSource(settings_cls, dotenv_settings),
            dotenv_settings,
            file_secret_settings,
        )

    home: Path = Field(
        default_factory=_default_home,
        description="Folder of everything the service keeps: database, run outputs, Redis, the teacher cache "
        "and toy rebuilds (default: $XDG_DATA_HOME/distill, else ~/.local/share/distill).",
    )
    allowed_teacher_urls: str = Field(
        "",
        description="Comma-separated URL prefixes a spec's teacher_server_url must start with (e.g. "
        "'http://teacher.lan:8001/,https://vllm.example.org/'). Empty: with auth on no remote teacher is allowed, "
        "with auth off (one user on their own machine) any URL is.",
    )
    database_url: str = Field("", description="SQLAlchemy URL; empty = a SQLite file in `home`.")
    database_password: str = Field(
        "",
        repr=False,
        description="Password for database_url when the URL has none, so that the password can come from a "
        "secret file (DISTILL_DATABASE_PASSWORD_FILE) while the URL stays in plain configuration.",
    )
    db_pool_size: int = Field(
        10, ge=1, le=1000, description="Database connections each API or worker process keeps open (docs/service.md)."
    )
    db_max_overflow: int = Field(
        40,
        ge=0,
        le=1000,
        description="Connections opened past db_pool_size under load and closed after use; with the pool, one for "
        "each of the 40 request threads and 10 for health, the reaper and the streams' checks (docs/service.md).",
    )
    redis_url: str = Field("", description="Redis URL; empty = an embedded redis-server started by `distill up`.")
    runs_dir: Path | None = Field(None, description="Where run folders go (default: home/runs).")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    auth: Literal["on", "off"] = Field("off", description="on = every route but health needs a Bearer token.")
    allowed_paths: str = Field(
        "",
        description="os.pathsep-separated roots that local model and data paths in a spec must lie under "
        "(the toy folder and hub ids are always allowed). Empty: with auth on only DISTILL_HOME/data, "
        "with auth off (one user on their own machine) any path.",
    )
    preflight_seconds: float = Field(
        60.0, gt=0, description="Longest the checks of what a submitted spec points at may take (422 past it)."
    )
    allow_remote_code: bool = Field(False, description="Let specs with trust_remote_code=true run.")
    admins: str = Field("", description="Comma-separated token names that may act on everyone's experiments.")
    queue: str = Field("worker.queue:CeleryQueue", description="The run queue (app.queue.RunQueue), module:attribute.")
    reconcile_after_seconds: float = Field(
        10.0, gt=0, description="A queued run the broker has not held for this long is published again."
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a running worker touches its run row.")
    lost_after_seconds: float = Field(60.0, gt=0, description="A running run silent this long is marked lost.")
    auto_resume_attempts: int = Field(
        3,
        ge=0,
        le=100,
        description="A lost run (its worker or machine died) is resumed from its last checkpoint this many times in "
        "a row without progress, then left lost for a person (0 = never automatically; a spec may ask for fewer).",
    )
    auto_resume_backoff_seconds: float = Field(
        5.0,
        ge=0,
        le=86_400,
        description="Wait before the first automatic resume of a lost run; doubles for each further one in a row.",
    )
    sweep_max_runs: int = Field(
        1000, ge=1, le=100_000, description="Most runs one sweep may ask for (settings x seeds); more is a 422."
    )
    metrics_flush_seconds: float = Field(0.5, gt=0, description="Longest a logged metric waits before its DB write.")
    db_retry_seconds: float = Field(
        180.0,
        ge=0,
        description="How long a worker retries a database write (a run's outcome, its last metrics) "
        "while the database is unavailable, before giving up.",
    )
    # team-wide defaults of the trackers a spec's report_to names (docs/trackers.md); each tool's own
    # variables (MLFLOW_TRACKING_URI, WANDB_PROJECT, WANDB_MODE, TRACKIO_DIR, ...) apply when these are empty
    mlflow_tracking_uri: str = Field(
        "", description="MLflow tracking server of service runs with report_to mlflow (else MLFLOW_TRACKING_URI)."
    )
    tracker_project: str = Field(
        "",
        description="MLflow experiment, W&B project and trackio project of runs (else each tool's variable, "
        "else 'distill').",
    )
    tensorboard_dir: str = Field(
        "", description="Root of TensorBoard event folders, one per run (<root>/run-<id>); else each run's folder."
    )
    wandb_mode: str = Field("", description="W&B mode of runs: online, offline or disabled (else WANDB_MODE).")
    tracker_finish_seconds: float = Field(
        120.0, gt=0, description="Longest a finished run waits for a tracker to send what it still holds."
    )

    @field_validator("database_url")
    @classmethod
    def _psycopg3(cls, url: str) -> str:
        # psycopg 3 is the driver we install; plain postgresql:// would ask SQLAlchemy for psycopg2.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @model_validator(mode="after")
    def _password_needs_a_url(self) -> Settings:
        if self.database_password:
            from sqlalchemy.engine import make_url

            if not self.database_url:
                raise ValueError("database_password is set but database_url is empty (SQLite takes no password)")
            if make_url(self.database_url).password is not None:
                raise ValueError("database_password is set but database_url has a password too: keep one of them")
        return self

    @property
    def teacher_url_prefixes(self) -> list[str] | None:
        """The allowed teacher-server URL prefixes; None = any URL (auth off and no list set)."""
        prefixes = [p.strip() for p in self.allowed_teacher_urls.split(",") if p.strip()]
        return prefixes if prefixes or self.auth == "on" else None

    @property
    def effective_database_url(self) -> str:
        if not self.database_url:
            return f"sqlite:///{self.home / 'distill.db'}"
        if not self.database_password:
            return self.database_url
        from sqlalchemy.engine import make_url

        # make_url quotes the password, so any character in it is safe
        return make_url(self.database_url).set(password=self.database_password).render_as_string(hide_password=False)

    @property
    def effective_runs_dir(self) -> Path:
        return self.runs_dir or self.home / "runs"

    @property
    def admin_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.admins.split(",") if name.strip())

    @property
    def allowed_roots(self) -> list[Path]:
        """Roots local model and data paths must lie under; [] = any path (auth off and no list set).

        With auth on the paths are closed by default: without a list, only `home/data` is readable."""
        roots = [Path(p).expanduser().resolve() for p in self.allowed_paths.split(os.pathsep) if p.strip()]
        if not roots and self.auth == "on":
            roots = [(self.home / DATA_FOLDER).expanduser().resolve()]
        return roots


def without_password(url: str) -> str:
    """`url` as it may be printed or logged: a password in it (database or Redis) shown as `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user_info, _, host = parts.netloc.rpartition("@")
    user = user_info.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@lru_cache
def get_settings() -> Settings:
    """The process's settings; tests change the environment and call `get_settings.cache_clear()`."""
    return Settings()
