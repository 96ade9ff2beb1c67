"""The package as a user installs it: one top-level name, and the architecture contracts.

The wheel is built and installed (``pip install --target``) the way ``pip install .`` would,
then ``lint-imports`` checks the contracts in pyproject.toml against that installed tree, so
the layers, the independence of integrations and the absence of cycles hold for what ships.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """careloop's wheel, built from this checkout and installed into a folder of its own."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
         "-w", str(root), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = root.glob("careloop-*.whl")
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return site


def test_the_wheel_puts_only_careloop_at_the_top_level(installed):
    (wheel,) = installed.parent.glob("careloop-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/", 1)[0] for name in archive.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"careloop"}
    assert {p.name for p in installed.iterdir() if p.name not in ("bin",) and "dist-info" not in p.name} == {
        "careloop"
    }
    for sub in ("config", "service", "workers", "integrations", "migrations"):
        assert (installed / "careloop" / sub / "__init__.py").exists(), sub
    assert (installed / "careloop" / "config" / "rules.yaml").exists()
    assert (installed / "careloop" / "config" / "policy.yaml").exists()
    for page in ("base.html", "member/event.html", "member/gone.html", "member/broken.html"):
        assert (installed / "careloop" / "service" / "templates" / page).exists(), page
    for asset in ("careloop.css", "icon.svg"):
        assert (installed / "careloop" / "service" / "static" / asset).exists(), asset
    assert (installed / "careloop" / "migrations" / "script.py.mako").exists()


def lint_imports(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=site, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_architecture_contracts_hold_for_what_ships(installed):
    result = lint_imports(installed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_layer_crossing_breaks_the_contract(installed, tmp_path):
    """The contract is live: the core importing the workers (a cycle waiting to happen) fails it."""
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    routing = site / "careloop" / "routing.py"
    routing.write_text(routing.read_text() + "\nimport careloop.workers  # noqa\n")
    result = lint_imports(site)
    assert result.returncode != 0
    assert "careloop.routing is not allowed to import careloop.workers" in result.stdout


@pytest.mark.parametrize("install", ["editable", "wheel"])
def test_the_cli_runs_from_a_folder_holding_a_config_module(install, installed, tmp_path):
    """Another project's ``config.py`` (or ``workers/``) in the working directory must not
    shadow careloop's packages — the way the worker starts its relay child."""
    (tmp_path / "config.py").write_text("RULES = 'not careloop'\n")
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("")
    env = {"PATH": str(BIN), "HOME": str(tmp_path)}
    if install == "wheel":
        env["PYTHONPATH"] = str(installed)
    rules = REPO / "config" / "rules.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "careloop.cli", "rules", "check", str(rules)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("9 rules OK")
    which = subprocess.run(
        [sys.executable, "-c", "import careloop.config.settings as s; print(s.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    expected = installed if install == "wheel" else REPO
    assert Path(which.stdout.strip()).is_relative_to(expected), which
