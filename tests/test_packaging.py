"""The wheel carries everything: built from what the Dockerfile copies, installed (not editable) into a
fresh virtualenv, started from outside the source tree, it serves the example specs as presets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import httpx
import pytest

from tests import services

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def dockerfile_sources() -> list[str]:
    """The paths the Dockerfile's COPY lines take from the build context: what an image build starts from."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "COPY":
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


def child_env(tmp: Path) -> dict[str, str]:
    """This environment without anything that would put the source tree or this test's settings in the child."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("DISTILL_")}
    return {**env, "PYTHONNOUSERSITE": "1", "HOME": str(tmp / "user"), "DISTILL_HOME": str(tmp / "home")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the built wheel installed (no -e); the main environment's site-packages give it the
    dependencies, through a .pth file (path lines only: the main environment's editable finder is not run)."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "src"
    source.mkdir()
    for name in dockerfile_sources():
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    dist = tmp / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(source)],
        capture_output=True, text=True, timeout=600, cwd=tmp,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("distill_service-*.whl")

    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=600, cwd=tmp,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    purelib = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))  # the running interpreter's
    (purelib / "main-environment.pth").write_text("".join(f"{path}\n" for path in ours))
    return env_dir


def run_in(env_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    outside = env_dir.parent / "elsewhere"  # a working directory outside the source tree
    outside.mkdir(exist_ok=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=outside, env=child_env(env_dir.parent))


def repo_presets() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted((ROOT / "examples").glob("*.yaml"))}


def test_the_installed_package_imports_from_the_venv_and_ships_every_example(installed: Path):
    script = (
        "import json, core_distill, app, ui.form\n"
        "from core_distill.presets import sweep_examples\n"
        "print(json.dumps({'files': [core_distill.__file__, app.__file__, ui.form.__file__],\n"
        "                  'choices': [name for _, name in ui.form.preset_choices()],\n"
        "                  'sweeps': sorted(sweep_examples())}))\n"
    )
    done = run_in(installed, str(installed / "bin" / "python"), "-c", script)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert all(Path(f).is_relative_to(installed) for f in found["files"]), found["files"]  # not the source tree
    assert found["choices"] == list(repo_presets())  # the dashboard's preset list
    assert found["sweeps"] == sorted(p.stem for p in (ROOT / "examples" / "sweeps").glob("*.yaml"))
    assert len(found["choices"]) >= 8, found["choices"]  # one per method


def test_distill_version_prints_the_package_version(installed: Path):
    done = run_in(installed, str(installed / "bin" / "distill"), "--version")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"distill {version}"


def test_the_installed_api_serves_the_presets(installed: Path):
    tmp = installed.parent
    redis_server = services.TestRedis(tmp)  # imported here, not by name: pytest would collect a Test* class
    port = services.free_port()
    env = {**child_env(tmp), "DISTILL_DATABASE_URL": f"sqlite:///{tmp / 'api.db'}", "DISTILL_REDIS_URL": redis_server.url}
    log = tmp / "api.log"
    outside = tmp / "elsewhere"
    outside.mkdir(exist_ok=True)
    with log.open("w") as out:
        server = subprocess.Popen(
            [installed / "bin" / "distill", "api", "--host", "127.0.0.1", "--port", str(port), "--no-reaper"],
            cwd=outside, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        services.wait_until_serving(f"{base}/api/health", server, log, timeout=300)  # migrations ran from the wheel too
        presets = httpx.get(f"{base}/api/presets", timeout=30).json()
        expected = repo_presets()
        assert [p["name"] for p in presets] == list(expected)
        assert all(p["yaml"] == expected[p["name"]] and p["description"] for p in presets)
    finally:
        services.stop_group(server, timeout=30)
        redis_server.close()
