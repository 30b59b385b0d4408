"""The package as a user installs it: ``python -m build`` makes a wheel of
``aioconductor-taskflow`` (import name ``aioconductor``) holding the dashboard's templates and
static files and the license; installed in a fresh virtualenv, its ``aioconductor`` command
runs ``--version`` and the demo."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
DISTRIBUTION = "aioconductor-taskflow"


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv}: {result.stdout[-2000:]}{result.stderr[-4000:]}"
    return result


@pytest.mark.timeout(300)
def test_the_wheel_installs_in_a_fresh_venv_and_its_command_runs(tmp_path: Path) -> None:
    # Built from a copy holding what a clean checkout holds (never in the shared checkout,
    # whose build/ and *.egg-info another build may be writing).
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "aioconductor",
        source / "aioconductor",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)],
        tmp_path,
        240,
    )
    [wheel] = dist.glob("*.whl")
    assert PROJECT["name"] == DISTRIBUTION
    assert wheel.name.startswith(f"aioconductor_taskflow-{PROJECT['version']}-")

    names = set(zipfile.ZipFile(wheel).namelist())
    dashboard = REPO / "aioconductor" / "dashboard"
    shipped = [
        path.relative_to(REPO).as_posix()
        for folder in ("templates", "static")
        for path in (dashboard / folder).iterdir()
        if path.is_file()
    ]
    assert shipped and all(path in names for path in shipped), sorted(set(shipped) - names)
    assert "aioconductor/py.typed" in names
    info = f"aioconductor_taskflow-{PROJECT['version']}.dist-info"
    assert f"{info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert f"Name: {DISTRIBUTION}\n" in metadata and "License-Expression: Apache-2.0" in metadata

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, 240)

    elsewhere = tmp_path / "elsewhere"  # not the checkout: the import is the venv's copy
    elsewhere.mkdir()
    command = str(venv / "bin" / "aioconductor")
    version = _run([command, "--version"], elsewhere, 60).stdout
    assert version.startswith(
        f"{DISTRIBUTION} {PROJECT['version']} (import name aioconductor, from {venv}/"
    )
    demo = _run([command, "demo", "--jobs", "20", "--folder", str(elsewhere)], elsewhere, 120)
    summary = demo.stdout.strip().splitlines()
    assert any(line.startswith("consumed 20 (") for line in summary), demo.stdout
    assert (elsewhere / "demo.db").exists()
