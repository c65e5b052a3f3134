"""Child entry point of a list of small hostile calls: ``python run_items.py MODULE BACKEND_MODULE START``.

MODULE.ITEMS maps an item id to a function of the backend module. Each item's outcome is printed as one
JSON line as soon as it is known, so that when an item crashes the process the parent knows which one it
was, records the crash for it, and starts a new child at the next item.
"""

import faulthandler
import importlib
import json
import os
import sys
import traceback

from common import to_jsonable

faulthandler.enable()
# Each item is small: one that takes longer than this is a hang (its stacks are dumped, the child exits,
# and the parent resumes at the next item).
_watchdog = float(os.environ.get("HOSTILE_ITEM_WATCHDOG", "20"))

_items = list(importlib.import_module(sys.argv[1]).ITEMS.items())
_backend = importlib.import_module(sys.argv[2])
for _index in range(int(sys.argv[3]), len(_items)):
    _id, _fn = _items[_index]
    print(json.dumps({"begin": _index, "id": _id}), flush=True)
    sys.stderr.write(f"--- item {_index} {_id}\n")
    sys.stderr.flush()
    faulthandler.dump_traceback_later(_watchdog, exit=True)
    try:
        _outcome = {"ok": to_jsonable(_fn(_backend))}
    except Exception as exc:  # the outcome the parent judges: type and message, as the differential tests do
        _outcome = {"raised": type(exc).__name__, "message": str(exc)[:1000],
                    "traceback": traceback.format_exc()[-3000:]}
    print(json.dumps({"end": _index, "id": _id, "outcome": _outcome}), flush=True)
