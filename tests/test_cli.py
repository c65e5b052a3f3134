"""The command line: ``python -m prefixindex`` and the ``prefixindex`` console script, each behaviour
checked in a subprocess (exit codes, which stream, what a user reads), and the version's one home."""

from __future__ import annotations

import sys
from pathlib import Path

import prefixindex
from prefixindex import _version

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the suite runs on 3.11 here; older interpreters skip the pyproject checks
    tomllib = None


def _pyproject() -> dict:
    assert tomllib is not None
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once():
    """pyproject reads the version from prefixindex/_version.py, and the package re-exports it."""
    assert prefixindex.__version__ == _version.__version__ == "0.2.0"
    if tomllib is None:
        return
    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "prefixindex._version.__version__"}
    for path in ROOT.joinpath("prefixindex").rglob("*.py"):  # no second literal anywhere in the package
        if path.name != "_version.py":
            assert '__version__ = "' not in path.read_text(), path
