"""Which backend runs, and that the two expose one API (SPEC 9)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import pytest

import prefixindex
from prefixindex import _core_py

from helpers import COMPILED, ROOT, compiled_source_hash

compiled_only = pytest.mark.skipif(
    COMPILED is None, reason="PREFIXINDEX_NO_EXTENSIONS=1: this run tests the pure-Python backend only")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PREFIXINDEX_NO_EXTENSIONS", "PREFIXINDEX_REQUIRE_EXTENSIONS")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environ, cwd=ROOT, timeout=60)


def test_backend_in_this_process_matches_the_environment():
    # helpers (via prefixindex._backend) and the package apply the same rules to the same environment
    if COMPILED is None:
        assert prefixindex.BACKEND == "python"
        assert prefixindex.SyncPrefixHashTable is _core_py.SyncPrefixHashTable
    else:
        assert prefixindex.BACKEND == "cython"
        assert prefixindex.SyncPrefixHashTable is COMPILED.SyncPrefixHashTable


@compiled_only
def test_default_import_picks_the_compiled_core():
    proc = run_python("import prefixindex; print(prefixindex.BACKEND, prefixindex.SyncPrefixHashTable.__module__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cython", "prefixindex._core"]


def test_no_extensions_forces_the_fallback():
    proc = run_python("import prefixindex; print(prefixindex.BACKEND, prefixindex.SyncPrefixHashTable.__module__)",
                      PREFIXINDEX_NO_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python", "prefixindex._core_py"]


@pytest.mark.parametrize("env", [{}, {"PREFIXINDEX_NO_EXTENSIONS": "0"}, {"PREFIXINDEX_NO_EXTENSIONS": ""}])
def test_the_compiled_core_runs_exactly_when_it_imports(env):
    """Unset, empty and "0" all mean: the compiled core when it imports, whatever this run's own setting."""
    proc = run_python(textwrap.dedent("""
        import importlib, prefixindex
        try:
            importlib.import_module("prefixindex._core"); has = "cython"
        except ImportError:
            has = "python"
        print(prefixindex.BACKEND, has)
        """), **env)
    assert proc.returncode == 0, proc.stderr
    backend, importable = proc.stdout.split()
    assert backend == importable


# sys.modules[name] = None makes any import of that module raise ImportError: a missing extension.
MISSING_EXTENSION = "import sys; sys.modules['prefixindex._core'] = None\n"


def test_missing_extension_falls_back_silently_by_default():
    proc = run_python(MISSING_EXTENSION + "import prefixindex; print(prefixindex.BACKEND)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"


def test_missing_extension_is_an_error_when_required():
    proc = run_python(MISSING_EXTENSION + textwrap.dedent("""
        try:
            import prefixindex
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            print("imported", prefixindex.BACKEND)
        """), PREFIXINDEX_REQUIRE_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ImportError:") and "prefixindex._core" in proc.stdout


def test_import_does_not_pull_in_the_optional_extras():
    proc = run_python("import sys, prefixindex; print(sorted(m for m in ('zmq', 'msgspec') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _public(obj) -> set:
    return {name for name in dir(obj) if not name.startswith("_")} | \
        {name for name in ("__enter__", "__exit__", "__init__") if hasattr(obj, name)}


@compiled_only
def test_modules_expose_the_same_names():
    assert sorted(COMPILED.__all__) == sorted(_core_py.__all__)
    assert COMPILED.BACKEND == "cython" and _core_py.BACKEND == "python"
    for name in COMPILED.__all__:
        assert hasattr(COMPILED, name) and hasattr(_core_py, name), name


@compiled_only
def test_tables_expose_the_same_methods_and_attributes():
    fast = COMPILED.SyncPrefixHashTable(seed=1, background_eviction=False)
    slow = _core_py.SyncPrefixHashTable(seed=1, background_eviction=False)
    assert _public(fast) == _public(slow)
    assert fast.config == slow.config and fast.seed == slow.seed == 1 and fast.block_size == slow.block_size


def _signature(func) -> inspect.Signature:
    sig = inspect.signature(func)
    # annotations differ in form (strings vs none in the compiled module): compare names, kinds, defaults
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@compiled_only
@pytest.mark.parametrize("name", sorted(n for n in dir(_core_py.SyncPrefixHashTable)
                                        if callable(getattr(_core_py.SyncPrefixHashTable, n))
                                        and (not n.startswith("_") or n in ("__enter__", "__exit__"))))
def test_method_signatures_match(name):
    assert _signature(getattr(COMPILED.SyncPrefixHashTable, name)) == \
        _signature(getattr(_core_py.SyncPrefixHashTable, name))


@compiled_only
@pytest.mark.parametrize("call, same_message", [
    (lambda cls: cls(None, background_eviction=False, seed=3), True),
    (lambda cls: cls(background_eviction=False, clock=lambda: 0.0, block_size=8, seed=4), True),
    (lambda cls: cls(None, None), False),  # clock is keyword-only (the interpreter words this error)
    (lambda cls: cls(background_eviction=False, nonsense=1), True),  # not a Config field
    (lambda cls: cls(config=3, background_eviction=False), True),
])
def test_constructors_take_the_same_arguments(call, same_message):
    # A compiled class's __init__ has no introspectable signature: compare what each constructor does.
    outcomes = []
    for cls in (COMPILED.SyncPrefixHashTable, _core_py.SyncPrefixHashTable):
        try:
            table = call(cls)
        except Exception as exc:
            outcomes.append((type(exc), str(exc) if same_message else None))
        else:
            outcomes.append(("ok", table.config))
            table.close()
    assert outcomes[0] == outcomes[1]


@compiled_only
@pytest.mark.parametrize("name", ["prefix_hash_chain", "token_bytes_from_msgpack", "xxh64_digest"])
def test_function_signatures_match(name):
    assert _signature(getattr(COMPILED, name)) == _signature(getattr(_core_py, name))


@compiled_only
def test_stub_matches_the_compiled_module():
    """The shipped _core.pyi describes the runtime module (mypy's stubtest), so type checkers and IDEs
    see the API that really runs."""
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "prefixindex._core"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_ships_typing_markers():
    pkg = os.path.dirname(prefixindex.__file__)
    assert os.path.exists(os.path.join(pkg, "py.typed"))
    assert os.path.exists(os.path.join(pkg, "_core.pyi"))


# --- prefixindex._backend: one place for the flags and the choice of a module ------------------------------

# two stand-in modules for a compiled/fallback pair other than the core (as _convert/_convert_py will be)
FAKE_PAIR = textwrap.dedent("""
    import sys, types
    for _name in ("fake_fast", "fake_slow"):
        sys.modules[_name] = types.ModuleType(_name)
    from prefixindex import _backend
    """)


@pytest.mark.parametrize("env, missing, expected", [
    ({}, False, "fake_fast"),
    ({"PREFIXINDEX_NO_EXTENSIONS": "1"}, False, "fake_slow"),
    ({"PREFIXINDEX_NO_EXTENSIONS": "0"}, False, "fake_fast"),
    ({}, True, "fake_slow"),
    ({"PREFIXINDEX_REQUIRE_EXTENSIONS": "1"}, False, "fake_fast"),
    ({"PREFIXINDEX_REQUIRE_EXTENSIONS": "1"}, True, "ImportError"),
    ({"PREFIXINDEX_REQUIRE_EXTENSIONS": "1", "PREFIXINDEX_NO_EXTENSIONS": "1"}, True, "fake_slow"),
])
def test_choose_applies_the_same_rules_to_any_pair(env, missing, expected):
    proc = run_python(FAKE_PAIR + ("sys.modules['fake_fast'] = None\n" if missing else "") + textwrap.dedent("""
        try:
            print(_backend.choose("fake_fast", "fake_slow").__name__)
        except ImportError:
            print("ImportError")
        """), **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_another_interpreter_gets_the_fallback():
    """The compiled core is built for CPython: elsewhere (PyPy, GraalPy) the pure-Python twin runs, even
    with PREFIXINDEX_REQUIRE_EXTENSIONS set and the compiled module importable."""
    proc = run_python("import platform; platform.python_implementation = lambda: 'PyPy'\n" + FAKE_PAIR + textwrap.dedent("""
        print(_backend.choose("fake_fast", "fake_slow").__name__, _backend.why_not_compiled())
        import prefixindex
        print(prefixindex.BACKEND)
        try:
            _backend.load("cython")
        except ImportError as exc:
            print("load:", exc)
        """), PREFIXINDEX_REQUIRE_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "fake_slow the compiled core is built for CPython, this is PyPy"
    assert lines[1] == "python"
    assert lines[2] == "load: the compiled core is built for CPython, this is PyPy"


def test_load_names_a_backend_and_never_substitutes_another():
    from prefixindex import _backend

    assert _backend.load("python") is _core_py
    with pytest.raises(ValueError, match="unknown backend 'fortran'; known: python, cython"):
        _backend.load("fortran")
    if COMPILED is not None:
        assert _backend.load("cython") is COMPILED
        assert sorted(_backend.available()) == ["cython", "python"]
    else:
        with pytest.raises(ImportError):
            _backend.load("cython")
        assert sorted(_backend.available()) == ["python"]


def test_load_says_why_the_compiled_core_is_not_used():
    proc = run_python(textwrap.dedent("""
        from prefixindex import _backend
        try:
            _backend.load("cython")
        except ImportError as exc:
            print(exc)
        """), PREFIXINDEX_NO_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "PREFIXINDEX_NO_EXTENSIONS is set"


@pytest.mark.parametrize("value, on", [("", False), ("0", False), ("1", True), ("yes", True)])
def test_flag_is_on_unless_unset_empty_or_zero(monkeypatch, value, on):
    from prefixindex import _backend

    monkeypatch.setenv("PREFIXINDEX_TEST_FLAG", value)
    assert _backend.flag("PREFIXINDEX_TEST_FLAG") is on
    monkeypatch.delenv("PREFIXINDEX_TEST_FLAG")
    assert _backend.flag("PREFIXINDEX_TEST_FLAG") is False


def test_stale_build_check_hashes_every_compiled_source(tmp_path):
    """The tests' side of the stale-build rule (setup.py compiles the same digest into the core): every
    .pyx, .pxd, .pxi and .h of the package, in order of file name; other files do not count."""
    (tmp_path / "b.pyx").write_bytes(b"B")
    (tmp_path / "a.h").write_bytes(b"A")
    (tmp_path / "c.pxd").write_bytes(b"C")
    (tmp_path / "d.py").write_bytes(b"ignored")
    (tmp_path / "d.pxi").write_bytes(b"D")
    import hashlib

    assert compiled_source_hash(tmp_path) == hashlib.sha256(b"ABCD").hexdigest()[:16]
    (tmp_path / "e.h").write_bytes(b"E")  # a new header changes the hash
    assert compiled_source_hash(tmp_path) == hashlib.sha256(b"ABCDE").hexdigest()[:16]
    if COMPILED is not None:
        assert COMPILED.SOURCE_HASH == compiled_source_hash()
