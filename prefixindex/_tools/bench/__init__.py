"""python -m prefixindex bench: both backends on the standard workloads, one table of medians.

Every backend that imports here (the pure-Python ``prefixindex._core_py`` always, the compiled
``prefixindex._core`` when it is built, unless PREFIXINDEX_NO_EXTENSIONS=1) runs the same workload
objects in the same process, batch for batch in turn, so that the ratios compare like with like on a
noisy machine.

Modules: ``common`` (constants, backends, tables, result rows), ``timing`` (Op, measure, summarize,
loop overhead), ``memory`` (the bytes-per-entry probe), ``machine`` (what the figures ran on),
``report`` (the sections in order, the table, ``--json``, ``--strict`` and ``main``), and one module
per section of rows: ``core`` (the original rows), ``threads``, ``inputs``, ``routing``, ``snapshot``.

Adding a section
----------------
1. Write ``prefixindex/_tools/bench/<name>.py`` with

   - ``ROWS``: a list of ``common.RowSpec`` tuples ``(id, title, unit, better, target, speedup
     target)``; ``better`` is ``"lower"`` or ``"higher"``; a target of None is for information. Ids
     are unique across sections (they are what ``--json`` readers and docs/performance.md key on).
   - ``run(modules, quick, budget_s, say) -> list of result rows``: ``modules`` is {backend name:
     backend module} of the backends that run (``"python"``, ``"cython"``), ``quick`` asks for a smoke
     run, ``budget_s`` is the timing budget per row (all backends together), ``say(msg)`` reports
     progress. Return exactly one row per entry of ``ROWS``, in that order, each made by
     ``common.result_row(spec, values)`` with ``values`` = {backend: {"median": float, "pass": bool or
     None, ...}} (optional "p25", "p75", "best", "batches", "calls"), or {backend: {"error": message,
     "pass": None}} when a backend could not run the row. ``common.judge`` fills "pass" in; a row may
     carry ``"notes"`` (a list of strings printed under the table).
   - optionally ``SUMMARY``: one line on how the section measures, printed above the table.
2. Check each row's work once, untimed, before timing it (``timing.Op.check``, or by hand), so that
   a figure always measures what its title says; time with ``timing.measure`` where calls are short,
   or for a fixed wall time where threads run.
3. Add ``<name>`` to ``report.SECTIONS`` (the order of the table) and to the module list above.
   tests/test_bench.py checks every section's rows from ``report.SECTIONS``; the table, ``--json``
   and ``--strict`` treat all rows alike.
"""

from .common import BACKEND_MODULES, available_backends
from .core import Workload
from .machine import machine_info
from .memory import memory_probe
from .report import SECTIONS, main, run
from .timing import measure

__all__ = ["BACKEND_MODULES", "SECTIONS", "Workload", "available_backends", "machine_info", "measure",
           "memory_probe", "run", "main"]
