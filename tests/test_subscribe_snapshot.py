"""Warm restarts of ``python -m prefixindex subscribe`` (issue 12, Deliver 3-4) and its
``--metrics-port`` (issue 13, Deliver 6), as processes: the command runs in a subprocess against the
stand-in publishers of test_vllm_zmq.py on 127.0.0.1; ``VLLMSubscriber.save`` / ``from_snapshot``
in-process on both backends.

The command is read through its ``--json`` lines (a reader thread), and stopped with SIGTERM once a
line shows what the test waits for; every wait is a bounded liveness timeout, never a timed assertion.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

import prefixindex
from prefixindex._subscriber_snapshot import load_subscriber_snapshot
from prefixindex.vllm import VLLMSubscriber

from helpers import BACKENDS
from test_vllm_decode import batch, removed, stored
from test_vllm_zmq import (BS, MODEL, connect, ctx, pod_stats, prompt, publishers,  # noqa: F401
                           subscribers, wait_applied, wait_for)

ROOT = Path(__file__).resolve().parent.parent
LIVENESS = 30.0  # seconds: generous, so that only a hang fails


class Command:
    """``python -m prefixindex subscribe ...`` in a subprocess, its stdout/stderr lines in queues."""

    def __init__(self, args: List[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "prefixindex", "subscribe", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.out: "queue.Queue[str]" = queue.Queue()
        self.err: "queue.Queue[str]" = queue.Queue()
        self.lines: List[str] = []
        self.err_lines: List[str] = []
        for stream, q in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, q), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, q: "queue.Queue[str]") -> None:
        for line in stream:
            q.put(line)

    def wait_line(self, condition: Callable[[str], bool], what: str, stderr: bool = False,
                  timeout: float = LIVENESS) -> str:
        q, seen = (self.err, self.err_lines) if stderr else (self.out, self.lines)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; stderr so far: {''.join(self.err_lines)}")
            try:
                line = q.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and q.empty():
                    raise AssertionError(f"the command exited ({self.proc.returncode}) before {what}: "
                                         f"{''.join(self.err_lines)}") from None
                continue
            seen.append(line)
            if condition(line):
                return line

    def wait_json(self, condition: Callable[[Dict[str, Any]], bool], what: str,
                  timeout: float = LIVENESS) -> Dict[str, Any]:
        line = self.wait_line(lambda text: text.startswith("{") and condition(json.loads(text)), what,
                              timeout=timeout)
        return json.loads(line)

    def join(self, pub: Any) -> None:
        """Slow joiner: publish empty batches until the command shows it applied one."""
        deadline = time.monotonic() + LIVENESS
        while True:
            pub.publish(batch([]))
            try:
                self.wait_json(lambda line: _pod(line)["batches"] >= 1, "a probe", timeout=0.3)
                return
            except AssertionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise

    def finish(self) -> int:
        """SIGTERM, then the exit status; the rest of the output lands in ``lines``/``err_lines``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(LIVENESS)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.05)
        for q, seen in ((self.out, self.lines), (self.err, self.err_lines)):
            while True:
                try:
                    seen.append(q.get(timeout=0.5))
                except queue.Empty:
                    break
        return self.proc.returncode

    def last_json(self) -> Dict[str, Any]:
        return json.loads([line for line in self.lines if line.startswith("{")][-1])


def _args(pub: Any, path: Path, *extra: str) -> List[str]:
    return ["--pod", f"pod-a={pub.endpoint},replay={pub.replay_endpoint},topic=kv-events", "--model", MODEL,
            "--block-size", str(BS), "--seed", "0", "--interval", "0.1", "--snapshot", str(path), *extra]


def _pod(line: Dict[str, Any]) -> Dict[str, Any]:
    return line["pods"]["pod-a"]


def _caught_up(seq: int) -> Callable[[Dict[str, Any]], bool]:
    return lambda line: _pod(line)["last_seq"] == seq and not _pod(line)["replaying"]


def _first_run(pub: Any, path: Path, n: int = 6) -> int:
    """The command from empty: probes until it sees one, then a chain of n stores; SIGTERM once applied."""
    cmd = Command(_args(pub, path, "--json"))
    try:
        cmd.wait_line(lambda text: "no snapshot at" in text, "the empty start", stderr=True)
        cmd.join(pub)
        for k in range(n):
            last = pub.publish(batch([stored([100 + k], prompt([k]), BS, None if k == 0 else 99 + k)]))
        cmd.wait_json(_caught_up(last), "the first run to apply the chain")
    finally:
        assert cmd.finish() == 0, "".join(cmd.err_lines)
    assert any("saved the snapshot to" in line for line in cmd.err_lines), cmd.err_lines
    return last


def _everything(pub: Any, subscribers: Any) -> Dict[Any, Any]:
    """``snapshot()`` of a table fed every batch the publisher ever sent (its buffer holds them all)."""
    reference = prefixindex.SyncPrefixHashTable(block_size=BS, seed=0)
    sub = subscribers(reference, [pub.pod("pod-a")], replay_on_connect=True).start()
    connect(pub, sub, "pod-a")
    wait_applied(sub, "pod-a", pub.seq - 1)
    sub.stop()
    return reference.snapshot()


@pytest.mark.parametrize("shape", ["3", "4"])
def test_restart_from_the_snapshot_ends_equal_to_a_router_that_never_stopped(tmp_path, publishers, subscribers,
                                                                             shape):
    pub = publishers(replay=True, shape=shape)
    path = tmp_path / "router.pisnap"
    last = _first_run(pub, path)
    table, positions = load_subscriber_snapshot(prefixindex.SyncPrefixHashTable, str(path))
    assert positions["pod-a"]["seq"] == last and positions["pod-a"]["publisher"]["endpoint"] == pub.endpoint
    assert table.match_blocks(MODEL, -1, prompt(list(range(6)))) == {"pod-a": 6}
    table.close()
    # while the router is down: the chain grows, part of it is evicted, another branch appears
    for k in range(6, 12):
        pub.publish(batch([stored([100 + k], prompt(list(range(k + 1)))[-BS:], BS, 99 + k)]))
    pub.publish(batch([removed([110, 111])]))
    missed_last = pub.publish(batch([stored([300], prompt([50]), BS, 102)]))
    cmd = Command(_args(pub, path, "--json"))
    try:
        cmd.wait_line(lambda text: "1 pod position(s) to resume from" in text, "the snapshot's load", stderr=True)
        line = cmd.wait_json(_caught_up(missed_last), "the delta replay")
    finally:
        assert cmd.finish() == 0, "".join(cmd.err_lines)
    stats = _pod(line)
    assert (stats["resumes"], stats["resume_refills"], stats["restarts"], stats["lost_batches"]) == (1, 0, 0, 0)
    assert stats["replayed_batches"] == missed_last - last  # only what it missed
    assert pub.replay.requests == [last]  # the saved seq, to check its ts
    restarted, positions = load_subscriber_snapshot(prefixindex.SyncPrefixHashTable, str(path))
    assert positions["pod-a"]["seq"] == missed_last
    assert restarted.snapshot() == _everything(pub, subscribers)
    restarted.close()


def test_a_restarted_publisher_clears_the_pod_and_the_text_stats_say_so(tmp_path, publishers, subscribers):
    old = publishers(replay=True)
    endpoint, replay_endpoint = old.endpoint, old.replay_endpoint
    path = tmp_path / "router.pisnap"
    last = _first_run(old, path)
    old.close()
    new = publishers(endpoint=endpoint, replay=True, replay_bind=replay_endpoint)  # seq starts again at 0
    for k in range(last + 3):
        new.publish(batch([stored([500 + k], prompt([20 + k]), BS, None if k == 0 else 499 + k)]))
    cmd = Command(_args(new, path, "--per-pod"))
    try:
        cmd.wait_line(lambda text: "resume_refills=1" in text and f"last_seq={new.seq - 1}" in text,
                      "a stats line showing the refill")
    finally:
        assert cmd.finish() == 0, "".join(cmd.err_lines)
    final = [line for line in cmd.lines if line.startswith("[")][-1]
    assert "resumes=0 resume_refills=1" in final
    table, positions = load_subscriber_snapshot(prefixindex.SyncPrefixHashTable, str(path))
    assert table.match_blocks(MODEL, -1, prompt([0])) == {}  # the old publisher's blocks are gone
    assert table.match_blocks(MODEL, -1, prompt([20 + k for k in range(last + 3)])) == {"pod-a": last + 3}
    assert positions["pod-a"]["seq"] == new.seq - 1
    table.close()


def test_a_buffer_that_no_longer_reaches_clears_the_pod(tmp_path, publishers, subscribers):
    pub = publishers(replay=True, keep=4)
    path = tmp_path / "router.pisnap"
    last = _first_run(pub, path)
    for k in range(6, 16):  # more than the publisher keeps
        pub.publish(batch([stored([100 + k], prompt([k]), BS, 99 + k)]))
    cmd = Command(_args(pub, path, "--json"))
    try:
        line = cmd.wait_json(_caught_up(pub.seq - 1), "the buffer's replay")
    finally:
        assert cmd.finish() == 0, "".join(cmd.err_lines)
    stats = _pod(line)
    assert (stats["resumes"], stats["resume_refills"]) == (0, 1)
    assert stats["lost_batches"] == pub.seq - 4
    table, _ = load_subscriber_snapshot(prefixindex.SyncPrefixHashTable, str(path))
    assert table.match_blocks(MODEL, -1, prompt([0])) == {}  # cleared: what came in between is unknown
    table.close()
    assert pub.replay.requests[0] == last


def test_periodic_saves_while_running(tmp_path, publishers):
    pub = publishers(replay=True)
    path = tmp_path / "router.pisnap"
    cmd = Command(_args(pub, path, "--json", "--snapshot-every", "0.2"))
    try:
        cmd.wait_line(lambda text: "no snapshot at" in text, "the empty start", stderr=True)
        wait_for(path.exists, LIVENESS, "a periodic save")
        first = path.stat().st_mtime_ns
        # a save replaces the file whole (rename): it always loads
        table, _ = load_subscriber_snapshot(prefixindex.SyncPrefixHashTable, str(path))
        table.close()
        wait_for(lambda: path.stat().st_mtime_ns != first, LIVENESS, "a second periodic save")
        assert cmd.proc.poll() is None  # still running: these were not the save on exit
    finally:
        assert cmd.finish() == 0, "".join(cmd.err_lines)
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temporary file left behind


def test_an_unreadable_snapshot_is_an_error_and_stays(tmp_path, publishers):
    pub = publishers(replay=True)
    path = tmp_path / "router.pisnap"
    path.write_bytes(b"not a snapshot at all")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "prefixindex", "subscribe", *_args(pub, path, "--duration", "0")],
                         capture_output=True, text=True, timeout=LIVENESS, cwd=ROOT, env=env)
    assert out.returncode == 2 and "snapshot" in out.stderr
    assert path.read_bytes() == b"not a snapshot at all"


def test_snapshot_every_needs_snapshot():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "prefixindex", "subscribe", "--pod", "a=tcp://127.0.0.1:9",
                          "--model", "m", "--snapshot-every", "1"],
                         capture_output=True, text=True, timeout=LIVENESS, cwd=ROOT, env=env)
    assert out.returncode == 2 and "--snapshot-every needs --snapshot PATH" in out.stderr


# -- --metrics-port ---------------------------------------------------------------------------------


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _sample(text: str, prefix: str) -> Optional[float]:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_port_serves_the_table_and_the_subscriber(tmp_path, publishers):
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed on this machine")
    pub = publishers(replay=True)
    cmd = Command(_args(pub, tmp_path / "s.pisnap", "--json", "--metrics-port", "0"))
    try:
        line = cmd.wait_line(lambda text: text.startswith("metrics on "), "the metrics URL", stderr=True)
        url = line.split("metrics on ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        cmd.join(pub)
        last = pub.publish(batch([stored([100], prompt([0]), BS), stored([101], prompt([1]), BS, 100)]))
        cmd.wait_json(_caught_up(last), "the stores")
        text = _scrape(url)
    finally:
        assert cmd.finish() == 0, "".join(cmd.err_lines)
    assert _sample(text, "prefixindex_table_entries ") == 2.0
    assert (_sample(text, "prefixindex_table_blocks_stored_total ") or 0) >= 2
    batches = _sample(text, 'prefixindex_subscriber_batches_total{pod="pod-a"}')
    assert batches is not None and batches >= 2
    with pytest.raises(OSError):  # closed on exit
        _scrape(url)


def test_metrics_port_in_use_is_an_error_exit(publishers):
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed on this machine")
    import socket

    pub = publishers()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-m", "prefixindex", "subscribe", "--pod", f"a={pub.endpoint}",
                              "--model", "m", "--metrics-port", str(port), "--duration", "0"],
                             capture_output=True, text=True, timeout=LIVENESS, cwd=ROOT, env=env)
    assert out.returncode == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in out.stderr


# -- VLLMSubscriber.save / from_snapshot, in-process, both backends ----------------------------------


def test_subscriber_save_and_from_snapshot(make_table, backend, tmp_path, publishers, subscribers):
    table = make_table()
    pub = publishers(replay=True)
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    for k in range(3):
        last = pub.publish(batch([stored([100 + k], prompt([k]), BS, None if k == 0 else 99 + k)]))
    wait_applied(sub, "pod-a", last)
    sub.stop()
    path = tmp_path / "sub.pisnap"
    saved = sub.save(str(path))
    assert saved["pod-a"]["seq"] == last and saved == {"pod-a": sub.positions()["pod-a"]}
    for k in range(3, 5):
        last = pub.publish(batch([stored([100 + k], prompt([k]), BS, 99 + k)]))
    again = VLLMSubscriber.from_snapshot(str(path), [pub.pod("pod-a")], table_class=backend.SyncPrefixHashTable,
                                         model=MODEL, poll_interval=0.01)
    try:
        assert type(again.table) is backend.SyncPrefixHashTable and again.table is not table
        assert again.table.snapshot() == table.snapshot()
        again.start()
        wait_applied(again, "pod-a", last)
        assert again.table.match_blocks(MODEL, -1, prompt(list(range(5)))) == {"pod-a": 5}
        assert pod_stats(again, "pod-a")["resumes"] == 1
    finally:
        again.stop()
        again.table.close()


def test_subscriber_save_to_a_stream_and_bad_arguments(make_table, backend, tmp_path):
    import io

    sub = VLLMSubscriber(make_table(), model=MODEL)
    buffer = io.BytesIO()
    assert sub.save(buffer) == {}  # no pod has applied anything: no positions
    buffer.seek(0)
    again = VLLMSubscriber.from_snapshot(buffer, table_class=backend.SyncPrefixHashTable, model=MODEL)
    assert again.table.snapshot() == {}
    again.table.close()
    with pytest.raises(TypeError, match="resume"):
        VLLMSubscriber.from_snapshot(io.BytesIO(buffer.getvalue()), table_class=backend.SyncPrefixHashTable,
                                     model=MODEL, resume={})
    bad = tmp_path / "bad.pisnap"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError):
        VLLMSubscriber.from_snapshot(str(bad), table_class=backend.SyncPrefixHashTable, model=MODEL)


# -- the warm-restart bench row (its figure is docs/snapshot.md's; here only that it runs and checks) ----


@pytest.mark.parametrize("backend_name", sorted(BACKENDS))
def test_vllm_bench_warm_resumes_every_pod_and_loses_nothing(backend_name):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "prefixindex", "vllm-bench", "warm", "--backend", backend_name,
                          "--pods", "2", "--missed", "50", "--json"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(out.stdout)["warm"]
    assert (r["pods"], r["missed_batches"], r["resumes"], r["resume_refills"], r["lost"]) == (2, 50, 2, 0, False)
    assert r["current_seconds"] is not None and r["current_seconds"] >= r["load_seconds"]
    assert r["entries_at_stop"] == 2 * 100 * 32


@pytest.mark.parametrize("how", ["duration", "ctrl-c"])
def test_the_save_on_exit_after_duration_or_ctrl_c(tmp_path, publishers, how):
    pub = publishers(replay=True)
    path = tmp_path / "router.pisnap"
    cmd = Command(_args(pub, path, "--json", *(["--duration", "4"] if how == "duration" else [])))
    try:
        cmd.join(pub)
        last = pub.publish(batch([stored([100], prompt([0]), BS)]))
        cmd.wait_json(_caught_up(last), "the store")
        if how == "ctrl-c":
            cmd.proc.send_signal(signal.SIGINT)
        assert cmd.proc.wait(LIVENESS) == 0
    finally:
        cmd.finish()
    assert any("saved the snapshot to" in line for line in cmd.err_lines), cmd.err_lines
    table, positions = load_subscriber_snapshot(prefixindex.SyncPrefixHashTable, str(path))
    assert positions["pod-a"]["seq"] >= last
    assert table.match_blocks(MODEL, -1, prompt([0])) == {"pod-a": 1}
    table.close()
