"""docker-compose.yml and the Dockerfile, checked without Docker (there is none on the test machines):
parsed, and their commands and variables run against the code they configure. `docker compose config`
runs too where Docker is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SECRETS_MOUNT = "/run/secrets/"


def unescaped(text: str) -> str:
    """A compose string as the container sees it: `$$` is compose's escape for `$`."""
    return text.replace("$$", "$")


def test_every_service_has_a_healthcheck():
    for name in ("redis", "postgres", "api", "worker", "flower"):
        check = SERVICES[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
    assert "inspect ping" in " ".join(SERVICES["worker"]["healthcheck"]["test"])
    assert "/healthcheck" in " ".join(SERVICES["flower"]["healthcheck"]["test"])


def test_secrets_come_from_files_and_never_from_variables():
    declared = COMPOSE["secrets"]
    assert set(declared) == {"postgres_password", "flower_basic_auth"}
    assert all("file" in spec for spec in declared.values())
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD" not in text and "${FLOWER_BASIC_AUTH" not in text
    for name, service in SERVICES.items():
        environment = service.get("environment") or {}
        assert not any(re.search(r"://[^/@]*:[^/@]*@", str(v)) for v in environment.values()), name  # no password in a URL
        for variable, value in environment.items():
            if variable.endswith("_FILE"):
                assert value.startswith(SECRETS_MOUNT), (name, variable)
                assert value.removeprefix(SECRETS_MOUNT) in service.get("secrets", []), (name, variable)  # mounted there
    for name in ("api", "worker"):
        assert SERVICES[name]["environment"]["DISTILL_DATABASE_PASSWORD_FILE"] == SECRETS_MOUNT + "postgres_password"
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == SECRETS_MOUNT + "postgres_password"


@pytest.mark.parametrize("service", ["api", "worker"])
def test_the_services_environment_gives_the_app_a_database_url_with_the_secret(service, tmp_path, monkeypatch):
    from app.settings import Settings

    password = "s3cret/with@signs"
    (tmp_path / "postgres_password").write_text(password + "\n")  # as `echo ... > file` writes it
    for variable, value in SERVICES[service]["environment"].items():
        monkeypatch.setenv(variable, str(value).replace(SECRETS_MOUNT, f"{tmp_path}/"))
    monkeypatch.chdir(tmp_path)
    url = make_url(Settings().effective_database_url)
    assert (url.username, url.password, url.host, url.database) == ("distill", password, "postgres", "distill")


def test_the_worker_healthcheck_pings_the_node_the_worker_command_names():
    from worker.launch import parse_gpus, worker_name

    worker = SERVICES["worker"]
    command = worker["command"]
    named = command[command.index("--name") + 1]
    node = worker["environment"]["DISTILL_WORKER_NODE"]
    assert worker_name(parse_gpus("cpu"), named) == node  # the name the Celery node takes
    assert "$DISTILL_WORKER_NODE" in unescaped(worker["healthcheck"]["test"][1])


@pytest.mark.parametrize("content", [None, ""])
def test_flower_stops_with_a_message_when_its_secret_is_missing_or_empty(content, tmp_path):
    secret = tmp_path / "flower_basic_auth"
    if content is not None:
        secret.write_text(content)
    shell, flag, script = SERVICES["flower"]["command"]
    script = unescaped(script).replace(SECRETS_MOUNT + "flower_basic_auth", str(secret))
    done = subprocess.run([shell, flag, script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "flower_basic_auth is missing or empty" in done.stderr


def test_the_dockerfile_installs_a_regular_package_and_checks_the_api():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert "examples" not in copied  # the presets are package data of core_distill
    assert "pip install -e" not in dockerfile
    healthcheck = re.search(r"^HEALTHCHECK (?:.*\\\n)*.*$", dockerfile, re.MULTILINE)  # with its continued lines
    assert healthcheck and "http://127.0.0.1:8000/api/health" in healthcheck.group(0)
    assert SERVICES["api"]["healthcheck"]["test"][-1].count("/api/health") == 1


def compose_command() -> list[str] | None:
    """`docker compose` (v2) or `docker-compose` (v1), whichever is installed; None without either."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_command() is None, reason="neither docker compose nor docker-compose is installed")
def test_docker_compose_accepts_the_file(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in COMPOSE["secrets"]:
        (secrets / name).write_text("x\n")
    done = subprocess.run(
        [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "DISTILL_SECRETS_DIR": str(secrets)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)  # interpolated and merged, as Docker would run it
    assert set(resolved["secrets"]) == set(COMPOSE["secrets"])
    for name in ("api", "worker", "flower"):
        assert resolved["services"][name]["healthcheck"]["test"], name
    worker_check = " ".join(resolved["services"]["worker"]["healthcheck"]["test"])
    assert '-d "$$DISTILL_WORKER_NODE"' in worker_check  # not interpolated by compose: left for the container's shell
