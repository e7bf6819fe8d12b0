"""The built wheel: it holds only the ``fedelta`` package, and its command runs from a fresh venv outside the checkout.

The fresh venv gets the wheel alone (``--no-deps``); the project venv's
installed dependencies are made visible to it by a plain path line in a
``.pth`` file, which adds that folder to ``sys.path`` without running the
``.pth`` files inside it, so the project's editable-install finder stays off
and the source checkout is not importable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parent.parent
# What a wheel is built from: the project's metadata and the folders mapped to fedelta's subpackages.
BUILD_SOURCES = ("pyproject.toml", "README.md", "fedelta", "common", "client", "server", "simulations")
OLD_TOP_LEVEL_NAMES = ("common", "client", "server", "simulations")
DEPENDENCIES_PTH = "fedelta-test-project-dependencies.pth"
SIMULATE_TIMEOUT_S = 600


def project_version() -> str:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]


def run_checked(command: list[str | Path], **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``command``, failing the test with its output when it exits non-zero."""
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def build_wheel(workdir: Path) -> Path:
    """Build the project's wheel from a copy of its sources in ``workdir`` (the checkout gets no build folders)."""
    source = workdir / "source"
    source.mkdir()
    skipped = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in BUILD_SOURCES:
        origin = PROJECT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=skipped)
        else:
            shutil.copy2(origin, source / name)
    wheels = workdir / "wheels"
    run_checked([sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps",
                 "--no-build-isolation", "--no-cache-dir", "-w", wheels, source])
    built = sorted(wheels.glob("fedelta-*.whl"))
    assert len(built) == 1, f"expected one fedelta wheel, found {[w.name for w in built]}"
    return built[0]


def purelib_of(python: Path) -> Path:
    done = run_checked([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    return Path(done.stdout.strip())


def fresh_venv_with(wheel: Path, venv: Path) -> Path:
    """A new venv holding ``wheel`` alone, seeing the project venv's installed dependencies; returns its bin folder."""
    run_checked([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run_checked([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python, "install",
                 "--no-deps", "--no-index", wheel])
    (purelib_of(python) / DEPENDENCIES_PTH).write_text(sysconfig.get_path("purelib") + "\n")
    return venv / "bin"


def isolated_environment(flwr_home: Path) -> dict[str, str]:
    """This process's environment without anything that would put the checkout on the path, Flower kept offline."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment.update(FLWR_TELEMETRY_ENABLED="0", HF_HUB_OFFLINE="1", FLWR_HOME=str(flwr_home))
    return environment


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel-build"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The bin folder of a fresh venv outside the checkout with the wheel installed."""
    return fresh_venv_with(wheel, tmp_path_factory.mktemp("fresh") / "venv")


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working folder outside the checkout (no ``pyproject.toml`` nearby)."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    assert not folder.is_relative_to(PROJECT)
    assert not any((parent / "pyproject.toml").is_file() for parent in (folder, *folder.parents))
    return folder


def test_wheel_holds_only_the_fedelta_package_with_the_console_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"fedelta-{project_version()}.dist-info/"

    outside = [name for name in names if not name.startswith(("fedelta/", dist_info))]
    top_level = {name.split("/", 1)[0] for name in names}

    assert outside == []
    assert top_level == {"fedelta", dist_info.rstrip("/")}
    assert not top_level & set(OLD_TOP_LEVEL_NAMES)
    templates = [name for name in names if re.fullmatch(r"fedelta/server/console/templates/[^/]+\.html", name)]
    static = {name for name in names if name.startswith("fedelta/server/console/static/")}
    assert len(templates) == len(list((PROJECT / "server/console/templates").glob("*.html"))) > 0
    assert static == {f"fedelta/server/console/static/{file.name}"
                      for file in (PROJECT / "server/console/static").iterdir() if file.is_file()}
    assert {"fedelta/__init__.py", "fedelta/__main__.py", "fedelta/cli.py", "fedelta/common/config.py",
            "fedelta/client/app.py", "fedelta/server/app.py", "fedelta/simulations/engine.py"} <= set(names)


def test_the_fresh_venv_imports_fedelta_from_its_own_site_packages(installed, elsewhere, tmp_path):
    code = "import fedelta, fedelta.common.config; print(fedelta.common.config.__file__)"

    done = run_checked([installed / "python", "-c", code], cwd=elsewhere, env=isolated_environment(tmp_path))

    config_file = Path(done.stdout.strip())
    assert config_file.is_relative_to(installed.parent)
    assert not config_file.is_relative_to(PROJECT)
    assert config_file.name == "config.py" and config_file.parent.name == "common"


def test_the_installed_command_lists_methods_and_reports_its_version(installed, elsewhere, tmp_path):
    environment = isolated_environment(tmp_path)

    methods = run_checked([installed / "fedelta", "methods"], cwd=elsewhere, env=environment)
    version = run_checked([installed / "fedelta", "--version"], cwd=elsewhere, env=environment)

    assert re.search(r"^  dare\s", methods.stdout, re.MULTILINE)
    assert re.search(r"^  fedavg\s", methods.stdout, re.MULTILINE)
    assert version.stdout.strip() == f"fedelta {project_version()}"


def test_the_installed_command_runs_a_smoke_simulation(installed, elsewhere, tmp_path):
    out = tmp_path / "out"

    run_checked([installed / "fedelta", "simulate", "--preset", "smoke", "--out", out], cwd=elsewhere,
                env=isolated_environment(tmp_path / "flwr-home"), timeout=SIMULATE_TIMEOUT_S)

    summary = json.loads((out / "summary.json").read_text())
    rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert re.fullmatch(r"[0-9a-f]{64}", summary["final_version_sha256"])
    assert rounds == [0, 1, 2]
