"""python -m prefixindex info: what runs here, and with which settings."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from typing import Any, Dict, List, Optional


def collect() -> Dict[str, Any]:
    import numpy
    import xxhash

    import prefixindex
    from prefixindex._config import ENV_VARS, Config

    from prefixindex import _backend

    impl = prefixindex._impl
    config = Config.from_env()
    try:
        _backend.load("cython")
        compiled = "in use" if prefixindex.BACKEND == "cython" else "importable"
    except ImportError as exc:  # why the fallback runs: a flag, the interpreter, or no build
        compiled = f"not used: {exc}"
    info: Dict[str, Any] = {
        "prefixindex": prefixindex.__version__,
        "backend": prefixindex.BACKEND,
        "backend_module": getattr(impl, "__file__", None),
        "compiled_core": compiled,
        "compiled_from": getattr(impl, "SOURCE_HASH", None),
        "config_from_env": dataclasses.asdict(config),
        "env": {var: os.environ[var] for var in ENV_VARS.values() if var in os.environ},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "xxhash": xxhash.VERSION,
    }
    for optional in ("zmq", "msgspec"):
        try:
            module = __import__(optional)
            info[optional] = getattr(module, "__version__", "?")
        except ImportError:
            info[optional] = None
    return info


def main(argv: Optional[List[str]] = None) -> int:
    from prefixindex.__main__ import command_prog

    parser = argparse.ArgumentParser(prog=command_prog("info"), description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        info = collect()
    except ValueError as exc:  # a bad AIBRIX_* variable (Config.from_env names it): the user's to fix
        parser.error(f"the environment: {exc}")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0
