"""The command line: ``prefixindex COMMAND [options]``, or ``python -m prefixindex COMMAND [options]``.

Each command is a module with ``main(argv) -> exit code``, imported only when it runs (so that a
command needing an optional extra cannot break the others). Exit codes: 0 done, 1 the command failed
(for ``bench --strict``: a target was missed), 2 a usage error. A closed stdout (``... | head``) ends
the command quietly; Ctrl-C ends it with 130.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Dict, List, Optional, TextIO, Tuple

# name -> (module, one line of help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "demo": ("prefixindex._tools.demo", "route synthetic traffic through the index and print hit rate and latency"),
    "info": ("prefixindex._tools.info", "print the backend, the configuration and the versions in use"),
    "bench": ("prefixindex._tools.bench", "time both backends on the standard workloads, one table of medians"),
    "subscribe": ("prefixindex._tools.subscribe", "subscribe to vLLM pods' KV-event publishers and print index stats"),
    "vllm-bench": ("prefixindex._tools.vllm_bench", "time the vLLM subscriber: ingestion, pods, idle CPU, floods"),
    "snapshot-info": ("prefixindex._tools.snapshot_info", "check a snapshot file and print what it holds"),
}
VERSION_WORDS = ("version", "--version", "-V")
HELP_WORDS = ("-h", "--help")

# a module an optional extra provides -> the extra's name (pyproject.toml, [project.optional-dependencies])
EXTRA_OF_MODULE = {"zmq": "vllm", "msgspec": "vllm", "prometheus_client": "metrics"}


def _prog() -> str:
    """How the user called us: the console script, or python -m prefixindex."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m prefixindex" if argv0 in ("__main__.py", "-m", "-c", "") else "prefixindex"


def command_prog(command: str) -> str:
    """The ``prog`` of a command's argument parser: how the user called it, ``prefixindex bench`` from
    the console script, ``python -m prefixindex bench`` from the module."""
    return f"{_prog()} {command}"


def _usage(prog: str) -> str:
    lines = [f"usage: {prog} {{{','.join(COMMANDS)}}} [options]", f"       {prog} --version", "",
             "commands:"]
    width = max(len(name) for name in COMMANDS)  # "snapshot-info" is longer than the rest
    for name, (_, help_text) in COMMANDS.items():
        lines.append(f"  {name:<{width}} {help_text}")
    lines += [f"  {'version':<{width}} print the version and the backend in use (also --version, -V)", "",
              f"{prog} COMMAND --help describes a command's options."]
    return "\n".join(lines)


def version_line() -> str:
    import prefixindex

    return f"prefixindex {prefixindex.__version__} ({prefixindex.BACKEND} backend)"


def _missing_extra(exc: BaseException) -> Optional[Tuple[str, str]]:
    """(extra, module) when ``exc`` comes from a module of an optional extra that is not installed."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and (seen.name or "").split(".")[0] in EXTRA_OF_MODULE:
            module = (seen.name or "").split(".")[0]
            return EXTRA_OF_MODULE[module], module
        seen = seen.__cause__ or seen.__context__
    return None


def _explain_missing_extra(prog: str, name: str, extra: str, module: str, out: TextIO) -> None:
    print(f"usage: {prog} {name} [options]\n\n{COMMANDS[name][1]}\n\n"
          f"This command needs the optional extra '{extra}' ({module} is not installed here): from a checkout "
          f"of the repository, pip install -e '.[{extra}]'.", file=out)


def _run(args: List[str], prog: str) -> int:
    if not args:
        print(_usage(prog), file=sys.stderr)
        return 2
    first = args[0]
    if first in HELP_WORDS:
        print(_usage(prog))
        return 0
    if first in VERSION_WORDS:
        print(version_line())
        return 0
    if first not in COMMANDS:
        print(f"prefixindex: unknown command {first!r} (choose from {', '.join([*COMMANDS, 'version'])})",
              file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[first][0])
    except ImportError as exc:
        missing = _missing_extra(exc)
        if missing is None:
            raise
        asked_for_help = any(a in HELP_WORDS for a in args[1:])
        _explain_missing_extra(prog, first, *missing, out=sys.stdout if asked_for_help else sys.stderr)
        return 0 if asked_for_help else 1
    return int(module.main(args[1:]) or 0)


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; ``argv`` defaults to ``sys.argv[1:]``. Returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _run(args, _prog())
        sys.stdout.flush()  # a pipe closed early fails here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (``prefixindex demo | head -3``): stop quietly. Python would report the
        # failed flush of stdout again at exit, so stdout is pointed at /dev/null first (the recipe of
        # the signal module's docs), and 1 says the output was cut short, as they suggest.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        finally:
            os.close(devnull)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
