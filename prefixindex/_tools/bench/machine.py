"""What the figures were measured on: CPU, memory, load, software versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any, Dict, Optional

import numpy as np


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git_commit() -> Optional[str]:
    # the repository root, when this package sits in a checkout: prefixindex/_tools/bench/machine.py
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    if not os.path.exists(os.path.join(here, ".git")):
        return None
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_info() -> Dict[str, Any]:
    import xxhash

    import prefixindex

    try:
        usable: Optional[int] = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(), "machine": platform.machine(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
        "memory_bytes": _memory_total(), "platform": platform.platform(), "libc": " ".join(platform.libc_ver()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": np.__version__, "xxhash": xxhash.VERSION, "prefixindex": prefixindex.__version__,
        "default_backend": prefixindex.BACKEND, "commit": _git_commit(), "load_average": load,
    }

