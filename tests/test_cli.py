"""The command line: ``python -m prefixindex`` and the ``prefixindex`` console script, each behaviour
checked in a subprocess (exit codes, which stream, what a user reads), and the version's one home."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import prefixindex
from prefixindex import _version
from helpers import COMPILED, ROOT

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


# --- the commands, in subprocesses ------------------------------------------------------------------------

COMMANDS = list(__import__("prefixindex.__main__", fromlist=["COMMANDS"]).COMMANDS)
VERSION_LINE = f"prefixindex {prefixindex.__version__} ({prefixindex.BACKEND} backend)"
# the optional extras' modules made unimportable (None in sys.modules makes every import of them fail)
WITHOUT_EXTRAS = "import sys\nfor _m in ('zmq', 'msgspec', 'prometheus_client'):\n    sys.modules[_m] = None\n"
TIMEOUT = 300


def cli(*args: str, wrapper: str = "", **kwargs) -> subprocess.CompletedProcess:
    """python -m prefixindex ARGS, or (with ``wrapper``) the same main() called after that code."""
    if wrapper:
        code = wrapper + "from prefixindex.__main__ import main\nsys.exit(main())\n"
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "prefixindex", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def no_traceback(proc: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


@pytest.mark.parametrize("word", ["--version", "-V", "version"])
def test_version_prints_the_version_and_the_backend(word):
    proc = cli(word)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, VERSION_LINE + "\n", "")


def test_an_unknown_command_is_named_on_stderr_with_exit_2():
    for word in ("frobnicate", "--frobnicate"):
        proc = cli(word)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr == (f"prefixindex: unknown command {word!r} (choose from "
                               f"{', '.join([*COMMANDS, 'version'])})\n")


def test_no_command_prints_the_usage_on_stderr_with_exit_2():
    proc = cli()
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: python -m prefixindex {")
    for name in COMMANDS:
        assert f"  {name} " in proc.stderr


@pytest.mark.parametrize("word", ["--help", "-h"])
def test_help_prints_the_usage_on_stdout_with_exit_0(word):
    proc = cli(word)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: python -m prefixindex {" + ",".join(COMMANDS) + "} [options]")
    for name in [*COMMANDS, "version"]:
        assert f"  {name} " in proc.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_without_the_optional_extras(name):
    proc = cli(name, "--help", wrapper=WITHOUT_EXTRAS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert no_traceback(proc), proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:") and f" {name}" in proc.stdout.splitlines()[0]
    if name == "subscribe":  # the one command that needs an extra says what to install
        assert "pip install" in proc.stdout and "vllm" in proc.stdout
        assert "--" in proc.stdout.split("usage:", 1)[1]  # and still lists its options


def test_a_command_whose_extra_is_missing_says_what_to_install():
    """The dispatcher's own guard, for any command module that fails to import for a missing extra."""
    wrapper = WITHOUT_EXTRAS + ("import prefixindex.__main__ as m\n"
                                "m.COMMANDS['needs-zmq'] = ('zmq', 'a command that needs pyzmq')\n")
    proc = cli("needs-zmq", "--port", "1", wrapper=wrapper)
    assert proc.returncode == 1 and proc.stdout == "" and no_traceback(proc)
    assert "needs the optional extra 'vllm'" in proc.stderr and "pip install -e '.[vllm]'" in proc.stderr
    helped = cli("needs-zmq", "--help", wrapper=wrapper)
    assert helped.returncode == 0 and "pip install -e '.[vllm]'" in helped.stdout and no_traceback(helped)


def test_a_closed_stdout_ends_the_command_quietly():
    """The reader goes away before the command writes (demo's table comes at the end): no traceback, no
    "Exception ignored" at exit, exit 1 (the output was cut short)."""
    proc = subprocess.Popen([sys.executable, "-m", "prefixindex", "demo", "--requests", "200"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=TIMEOUT)
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr and "Exception ignored" not in stderr


def test_piped_into_head():
    proc = subprocess.run(f"{shlex.quote(sys.executable)} -m prefixindex demo --requests 200 | head -3",
                          shell=True, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert len(proc.stdout.splitlines()) == 3 and proc.stdout.startswith("prefixindex demo")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


BENCH = ("bench", "--strict", "--quick", "--no-memory", "--sections", "core", "--seconds-per-row", "0.02")


def _bench_with_targets(targets: str) -> str:
    """A wrapper that rewrites the core rows' targets before the bench runs: ``targets`` is Python code
    mapping a row spec ``r`` to its new spec."""
    return ("import sys\nfrom prefixindex._tools.bench import core\n"
            f"core.ROWS[:] = [(lambda r: {targets})(r) for r in core.ROWS]\n")


def test_bench_strict_names_the_target_that_failed():
    impossible = "(r[0], r[1], r[2], r[3], 1e-3 if r[0] == 'match_prefix_full' else None, None)"
    proc = cli(*BENCH, wrapper=_bench_with_targets(impossible))
    assert proc.returncode == 1 and no_traceback(proc), proc.stderr[-2000:]
    failures = proc.stderr.split("bench --strict: ", 1)[1].splitlines()
    if COMPILED is None:
        assert failures[0] == "1 failure(s):"
        assert failures[1].startswith("  the compiled backend (cython) did not run: ")
    else:
        assert failures[0] == "1 failure(s):"
        assert re.fullmatch(r"  match_prefix_full: match_prefix, 1,024 tokens, full hit, 1 ready pod: cython "
                            r"[0-9.,]+ us/call, target <= 0\.001", failures[1]), failures


def test_bench_strict_names_a_missed_ratio():
    impossible = "(r[0], r[1], r[2], r[3], None, 1e9 if r[0] == 'process_block_stored_1' else None)"
    proc = cli(*BENCH, wrapper=_bench_with_targets(impossible))
    assert proc.returncode == 1 and no_traceback(proc)
    if COMPILED is not None:
        assert re.search(r"^  process_block_stored_1: .*: compiled/fallback ratio [0-9.]+x, target >= 1e\+09x$",
                         proc.stderr, re.M), proc.stderr[-2000:]


def test_bench_strict_passes_when_every_target_is_met():
    proc = cli(*BENCH, wrapper=_bench_with_targets("(r[0], r[1], r[2], r[3], None, None)"))
    if COMPILED is None:
        assert proc.returncode == 1 and "the compiled backend (cython) did not run" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "bench --strict: the compiled backend ran and met every target" in proc.stderr


def test_bench_strict_without_the_compiled_backend_says_so():
    proc = cli(*BENCH, "--backends", "python", wrapper=_bench_with_targets("(r[0], r[1], r[2], r[3], None, None)"))
    assert proc.returncode == 1 and no_traceback(proc)
    assert "  the compiled backend (cython) did not run: it was not asked for (--backends)" in proc.stderr


# --- the console script -------------------------------------------------------------------------------------


def test_pyproject_declares_the_console_script():
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11; this interpreter is older")
    assert _pyproject()["project"]["scripts"] == {"prefixindex": "prefixindex.__main__:main"}


SCRIPT = shutil.which("prefixindex")


@pytest.mark.skipif(SCRIPT is None, reason="the prefixindex console script is not installed in this environment")
def test_the_installed_console_script():
    version = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert version.returncode == 0 and version.stderr == ""
    # the installed copy may be another checkout's: its version and backend, in the same form
    assert re.fullmatch(r"prefixindex \S+ \((python|cython) backend\)\n", version.stdout)
    unknown = subprocess.run([SCRIPT, "frobnicate"], capture_output=True, text=True, timeout=TIMEOUT)
    assert unknown.returncode == 2 and unknown.stderr.startswith("prefixindex: unknown command 'frobnicate'")
    usage = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: prefixindex {")
    bench = subprocess.run([SCRIPT, "bench", "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert bench.returncode == 0 and bench.stdout.startswith("usage: prefixindex bench")


@pytest.mark.parametrize("name", ["demo", "info", "bench"])
def test_a_command_names_itself_as_the_user_called_it(name):
    """Through the console script (argv[0] is its path) the usage says ``prefixindex CMD``; through
    ``python -m`` it says ``python -m prefixindex CMD``."""
    as_script = cli(name, "--help", wrapper="import sys\nsys.argv[0] = '/usr/local/bin/prefixindex'\n")
    assert as_script.returncode == 0 and as_script.stdout.startswith(f"usage: prefixindex {name}")
    as_module = cli(name, "--help")
    assert as_module.returncode == 0 and as_module.stdout.startswith(f"usage: python -m prefixindex {name}")


def test_info_says_what_runs_and_why():
    proc = cli("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["prefixindex"] == prefixindex.__version__ and info["backend"] == prefixindex.BACKEND
    if prefixindex.BACKEND == "cython":
        assert info["compiled_core"] == "in use"
    else:
        assert info["compiled_core"].startswith("not used: ")
    forced = cli("info", "--json", env={**os.environ, "PREFIXINDEX_NO_EXTENSIONS": "1"})
    assert forced.returncode == 0, forced.stderr
    info = json.loads(forced.stdout)
    assert info["backend"] == "python" and info["compiled_core"] == "not used: PREFIXINDEX_NO_EXTENSIONS is set"


@pytest.mark.parametrize("variable,value", [("AIBRIX_SYNC_MAX_CONTEXTS", "abc"),
                                            ("AIBRIX_PREFIX_CACHE_BLOCK_SIZE", "0")])
@pytest.mark.parametrize("as_json", [False, True])
def test_info_explains_a_bad_environment_variable(variable, value, as_json):
    """info is what an operator runs to check the configuration: a bad AIBRIX_* variable is a usage
    error naming it (exit 2, as subscribe gives), not a traceback."""
    proc = cli("info", *(["--json"] if as_json else []), env={**os.environ, variable: value})
    assert proc.returncode == 2 and proc.stdout == "" and no_traceback(proc), proc.stderr[-2000:]
    assert f"info: error: the environment: {variable} (Config." in proc.stderr
    assert repr(int(value) if value.isdigit() else value) in proc.stderr


@pytest.mark.parametrize("argv,message", [
    (["--block-size", "99999999"], "block_size must be at most 16,777,216, got 99999999"),  # was a traceback
    (["--block-size", str(2**70)], "block_size must be at most 16,777,216"),
    (["--block-size", "0"], "block_size must be at least 1, got 0"),
])
def test_demo_block_size_errors(argv, message, capsys):
    from prefixindex._tools.demo import main as demo_main

    with pytest.raises(SystemExit) as exc:
        demo_main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
