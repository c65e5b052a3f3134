"""python -m prefixindex bench: both backends on the standard workloads, one table of medians.

Every backend that imports here (the pure-Python ``prefixindex._core_py`` always, the compiled
``prefixindex._core`` when it is built, unless PREFIXINDEX_NO_EXTENSIONS=1) runs the same workload
objects in the same process, batch for batch in turn, so that the ratios compare like with like on a
noisy machine.

Modules: ``common`` (constants, backends, tables, result rows), ``timing`` (Op, measure, summarize,
loop overhead), ``memory`` (the bytes-per-entry probe), ``machine`` (what the figures ran on),
``report`` (the table, ``--json``, ``--strict`` and ``main``), and one module per section of rows.
"""

from .common import BACKEND_MODULES, available_backends
from .core import Workload
from .machine import machine_info
from .memory import memory_probe
from .report import main, run
from .timing import measure

__all__ = ["BACKEND_MODULES", "Workload", "available_backends", "machine_info", "measure", "memory_probe",
           "run", "main"]
