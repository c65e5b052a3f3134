"""Child entry point of one hostile scenario: ``python run_case.py MODULE:FUNCTION BACKEND_MODULE``.

Exit 0 means the scenario held; an assertion is exit 1 with its traceback; a crash is a signal. The
faulthandler dumps every thread's stack on a fatal signal, and (HOSTILE_WATCHDOG seconds in) on a hang,
so that the parent's failure message shows where the core was.
"""

import faulthandler
import importlib
import os
import sys

faulthandler.enable()
_watchdog = float(os.environ.get("HOSTILE_WATCHDOG", "0"))
if _watchdog > 0:
    faulthandler.dump_traceback_later(_watchdog, exit=True)

_module, _function = sys.argv[1].split(":")
_backend = importlib.import_module(sys.argv[2])
getattr(importlib.import_module(_module), _function)(_backend)
print("outcomes:", importlib.import_module("common").OUTCOMES, flush=True)
