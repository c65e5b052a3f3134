"""The parent side of the hostile tests: run children with a timeout, in parallel, and word failures.

Every risky case runs in a child process (SPEC 8, COMMON "Standards"): a crash is a negative return code,
a hang is the faulthandler watchdog firing (or, as a backstop, the timeout), and either is a test failure
that quotes the child's stderr instead of a dead test run. Children start in a thread pool as soon as the
first hostile test module is set up (``presubmit``), so the module's runtime is that of its slowest
children, not of their sum.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import pytest

CASES = Path(__file__).resolve().parent
ROOT = CASES.parent.parent
if str(CASES) not in sys.path:  # the tests read the item lists of the case modules (ITEMS, EXPECT)
    sys.path.insert(0, str(CASES))
# Generous: the machine is shared and loaded. The watchdog fires first, so that a hang shows its stacks.
TIMEOUT = float(os.environ.get("PREFIXINDEX_HOSTILE_TIMEOUT", "60"))
ITEM_WATCHDOG = float(os.environ.get("PREFIXINDEX_HOSTILE_ITEM_TIMEOUT", "20"))
# Hung children sleep (a deadlock), so more children than cores keeps a run with hangs short.
WORKERS = int(os.environ.get("PREFIXINDEX_HOSTILE_WORKERS", "6"))
MODULES = {"python": "prefixindex._core_py", "cython": "prefixindex._core"}
STDERR_TAIL = 6000

TIMEOUTS: Dict[str, float] = {}  # scenario -> its timeout when it needs more than TIMEOUT
_pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="hostile-child")
_futures: Dict[Tuple[Any, ...], "Future[Any]"] = {}
_lock = threading.Lock()
_running: Set["subprocess.Popen[str]"] = set()
_closing = False
_cleanup_registered = False


@dataclass
class Run:
    returncode: Optional[int]  # None: killed by the parent at TIMEOUT
    stdout: str
    stderr: str
    timeout: float

    @property
    def hung(self) -> bool:
        return self.returncode is None or (self.returncode != 0 and "Timeout (" in self.stderr)

    def describe(self) -> str:
        if self.hung:
            return "HUNG: no exit within the timeout (stacks from the faulthandler watchdog below)"
        if self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"CRASHED: killed by {name} (return code {self.returncode})"
        return f"FAILED: exit code {self.returncode}"

    def report(self) -> str:
        return f"{self.describe()}\n--- child stderr (tail) ---\n{self.stderr[-STDERR_TAIL:]}"


def _text(data: Any) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def run_child(args: List[str], timeout: float = TIMEOUT) -> Run:
    env = dict(os.environ)
    env["HOSTILE_ITEM_WATCHDOG"] = str(ITEM_WATCHDOG)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(CASES)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["HOSTILE_WATCHDOG"] = str(max(timeout - 8.0, timeout * 0.8))
    with _lock:
        if _closing:
            return Run(-int(signal.SIGTERM), "", "not run: the test session ended first", timeout)
        proc = subprocess.Popen([sys.executable, "-X", "faulthandler", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _running.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return Run(None, _text(out), _text(err), timeout)
    finally:
        with _lock:
            _running.discard(proc)
    return Run(proc.returncode, out, err, timeout)


def shutdown() -> None:
    """End of the test session: drop the children not started yet and kill those still running (a run
    stopped early, by -x or ^C, must not wait for them)."""
    global _closing
    with _lock:
        _closing = True
        running = list(_running)
    _pool.shutdown(wait=False, cancel_futures=True)
    for proc in running:
        proc.kill()


# --- scenarios: one child per (scenario, backend), judged by its exit code ---------------------------

def _scenario(scenario: str, backend: str, timeout: float) -> Run:
    return run_child([str(CASES / "run_case.py"), scenario, MODULES[backend]], timeout)


def _submit_once(key: Tuple[Any, ...], work: Callable[..., Any], *args: Any) -> "Future[Any]":
    """The child of `key`, started on the pool the first time it is asked for (presubmit, then the test)."""
    with _lock:
        if key not in _futures:
            _futures[key] = _pool.submit(work, *args)
        return _futures[key]


def submit_scenario(scenario: str, backend: str, timeout: float = TIMEOUT) -> "Future[Any]":
    return _submit_once(("scenario", scenario, backend), _scenario, scenario, backend, timeout)


def check_scenario(scenario: str, backend: str) -> Run:
    run: Run = submit_scenario(scenario, backend, TIMEOUTS.get(scenario, TIMEOUT)).result()
    if run.returncode != 0:
        pytest.fail(f"{scenario} on the {backend} backend: {run.report()}", pytrace=False)
    return run


# --- item lists: one child per (module, backend), restarted after the item that crashed -------------

def _items(module: str, backend: str, timeout: float) -> Dict[str, Dict[str, Any]]:
    outcomes: Dict[str, Dict[str, Any]] = {}
    start = 0
    while True:
        run = run_child([str(CASES / "run_items.py"), module, MODULES[backend], str(start)], timeout)
        current = None
        for line in run.stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "begin" in msg:
                current = (msg["begin"], msg["id"])
            elif "end" in msg:
                outcomes[msg["id"]] = msg["outcome"]
                current = None
        if run.returncode == 0:
            return outcomes
        if current is None:  # died between items (at import, or at exit): nothing to resume from
            outcomes["<child>"] = {"crashed": run.report()}
            return outcomes
        index, item_id = current
        # The tail of stderr from this item's own marker on: the traceback or stack dump of this item.
        tail = run.stderr[run.stderr.rfind(f"--- item {index} "):]
        outcomes[item_id] = {"crashed": f"{run.describe()}\n--- child stderr (this item) ---\n"
                                        f"{tail[-STDERR_TAIL:]}"}
        start = index + 1


ITEMS_TIMEOUT = 5 * TIMEOUT  # a backstop only: each item has its own watchdog (run_items.py)


def submit_items(module: str, backend: str, timeout: float = ITEMS_TIMEOUT) -> "Future[Any]":
    return _submit_once(("items", module, backend), _items, module, backend, timeout)


def item_outcome(module: str, item_id: str, backend: str) -> Dict[str, Any]:
    """The outcome of one item: {"ok": value} or {"raised": type, "message": ..}; a crash or a hang fails."""
    outcomes = submit_items(module, backend).result()
    if "<child>" in outcomes:
        pytest.fail(f"{module} on the {backend} backend: {outcomes['<child>']['crashed']}", pytrace=False)
    outcome = outcomes.get(item_id)
    if outcome is None:
        pytest.fail(f"{module}:{item_id} on the {backend} backend produced no outcome", pytrace=False)
    if "crashed" in outcome:
        pytest.fail(f"{module}:{item_id} on the {backend} backend: {outcome['crashed']}", pytrace=False)
    result: Dict[str, Any] = outcome
    return result


def describe(outcome: Dict[str, Any]) -> str:
    if "raised" in outcome:
        return f"raised {outcome['raised']}: {outcome['message']}\n{outcome.get('traceback', '')}"
    return f"returned {outcome['ok']!r}"


# --- start every selected child at once ---------------------------------------------------------------

def presubmit(request: Any, backends: Iterable[str]) -> None:
    """Submit the children of every selected hostile test, in collection order (fixture of each module).
    A test without a ``backend`` parameter is a differential one: it needs the children of every backend."""
    global _cleanup_registered
    if not _cleanup_registered:
        request.session.config.add_cleanup(shutdown)
        _cleanup_registered = True
    backends = sorted(backends)
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "test_hostile" not in item.nodeid:
            continue
        for backend in [params["backend"]] if "backend" in params else backends:
            if "scenario" in params:
                submit_scenario(params["scenario"], backend, TIMEOUTS.get(params["scenario"], TIMEOUT))
            elif "group" in params:
                submit_items(params["group"], backend)
