"""Which backend runs: the one place that reads the environment flags and picks a module.

Every compiled module of the package has a pure-Python twin with the same API (``prefixindex._core``
and ``prefixindex._core_py``; more pairs may follow, such as ``prefixindex._convert`` and
``prefixindex._convert_py``). ``choose(compiled, fallback)`` is how the package picks one of a pair;
``load(name)`` is how the bench and the tests ask for one backend of the table by its name.

- ``PREFIXINDEX_NO_EXTENSIONS=1``: the pure-Python twin, always.
- ``PREFIXINDEX_REQUIRE_EXTENSIONS=1``: a compiled module that does not import is an ImportError
  instead of a silent fallback (CI sets it, so that a broken build cannot pass as a slow one).
- An interpreter other than CPython (PyPy, GraalPy) gets the twin: the extension is built against
  CPython's C API; elsewhere it is missing, or runs through a compatibility layer (PyPy's cpyext)
  whose per-call cost is what the compiled core exists to avoid.
"""

from __future__ import annotations

import importlib
import os
import platform
from types import ModuleType
from typing import Dict, Optional

NO_EXTENSIONS = "PREFIXINDEX_NO_EXTENSIONS"
REQUIRE_EXTENSIONS = "PREFIXINDEX_REQUIRE_EXTENSIONS"

# the table's backends by name (the value of each module's BACKEND)
BACKENDS: Dict[str, str] = {"python": "prefixindex._core_py", "cython": "prefixindex._core"}
FALLBACK = "python"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def flag(name: str) -> bool:
    """An environment flag is on unless it is unset, empty or "0"."""
    return os.environ.get(name, "") not in ("", "0")


def why_not_compiled() -> Optional[str]:
    """Why compiled modules are not used in this process (None: they are, where they import)."""
    if flag(NO_EXTENSIONS):
        return f"{NO_EXTENSIONS} is set"
    if platform.python_implementation() != "CPython":
        return f"the compiled core is built for CPython, this is {platform.python_implementation()}"
    return None


def choose(compiled: str, fallback: str) -> ModuleType:
    """The compiled module ``compiled`` if it may be used and imports, else the module ``fallback``.

    With PREFIXINDEX_REQUIRE_EXTENSIONS set, a compiled module that fails to import raises its
    ImportError (a flag or interpreter that rules compiled modules out still gives the fallback).
    """
    if why_not_compiled() is None:
        try:
            return importlib.import_module(compiled)
        except ImportError:
            if flag(REQUIRE_EXTENSIONS):
                raise
    return importlib.import_module(fallback)


def load(name: str) -> ModuleType:
    """The table backend called ``name`` ("python" or "cython"), or ImportError saying why not.

    Unlike ``choose`` this never substitutes one backend for another. A module found outside this
    package's directory is refused: with an older tree on PYTHONPATH, an editable install's import hook
    can hand out the work tree's compiled core beside the old tree's Python code.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name != FALLBACK:
        reason = why_not_compiled()
        if reason is not None:
            raise ImportError(reason)
    try:
        module = importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        raise ImportError(f"not importable: {exc}") from exc
    where = os.path.dirname(os.path.abspath(module.__file__ or ""))
    if where != _PACKAGE_DIR:
        raise ImportError(f"{module.__file__} is not part of the prefixindex package in use ({_PACKAGE_DIR})")
    return module


def available() -> Dict[str, ModuleType]:
    """{name: module} of the table backends that ``load`` gives in this process."""
    found: Dict[str, ModuleType] = {}
    for name in BACKENDS:
        try:
            found[name] = load(name)
        except ImportError:
            pass
    return found
