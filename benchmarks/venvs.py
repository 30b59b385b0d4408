"""Each peer in a virtualenv of its own under ``benchmarks/.cache/venvs/<peer>``.

Peers pin conflicting client versions, so none of them is ever installed next to aioconductor.
A venv is reused while its requirements are unchanged (a marker file records them).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CACHE", "InstallError", "ensure_venv"]

CACHE = Path(__file__).resolve().parent / ".cache"
_MARKER = ".bench-requirements"


class InstallError(Exception):
    """A venv could not be made or its requirements not installed."""


def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def _run(argv: Sequence[str], log: Path, timeout: float) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.run(
                list(argv), stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise InstallError(f"`{argv[2] if len(argv) > 2 else argv[0]}` timed out") from None
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise InstallError(f"exit status {proc.returncode}: {' | '.join(tail)}")


def ensure_venv(name: str, requirements: Sequence[str], *, timeout: float = 600.0) -> Path:
    """The Python of venv ``name`` with ``requirements`` installed, made if needed.

    Raises:
        InstallError: the venv could not be created or pip failed (the log is named).
    """
    folder = CACHE / "venvs" / name
    python = folder / "bin" / "python"
    marker = folder / _MARKER
    wanted = "\n".join(requirements)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"install-{name}.log"
    log.write_text("")
    try:
        if not python.exists():
            _run([_base_python(), "-m", "venv", "--clear", str(folder)], log, 120)
        _run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
                *requirements,
            ],
            log,
            timeout,
        )
    except InstallError as exc:
        raise InstallError(f"{exc} (log: {log.relative_to(CACHE.parent.parent)})") from None
    marker.write_text(wanted)
    return python
