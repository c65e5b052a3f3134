"""``python -m prefixindex subscribe``: argument handling in-process, and end to end in a subprocess
against a publisher written here from the wire doc (it republishes its stores every 20 ms, so the
subscriber's slow join costs nothing: BlockStored is idempotent)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest
import zmq

from prefixindex._tools.subscribe import main
from prefixindex.vllm import Pod, VLLMSubscriber

from test_vllm_decode import batch, stored

ROOT = Path(__file__).resolve().parent.parent


class RepeatingPublisher:
    def __init__(self, payload: bytes, topic: bytes = b"kv-events") -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind("tcp://127.0.0.1:*")
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.payload = payload
        self.topic = topic
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.pub.send_multipart([self.topic, self.sent.to_bytes(8, "big"), self.payload])
            self.sent += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pub.close(0)
        self.ctx.term()


@pytest.fixture
def publisher():
    pub = RepeatingPublisher(batch([stored([11, 12], list(range(8)), 4, enc="array"),
                                    stored([13], list(range(20, 24)), 4, lora_name="sql"),
                                    stored([14], list(range(30, 34)), 4, medium="CPU")]))
    yield pub
    pub.close()


def _run(args: List[str], **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "prefixindex", "subscribe", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env, **kwargs)


def test_end_to_end_json(publisher):
    out = _run(["--pod", f"pod-a={publisher.endpoint},topic=kv-events",
                "--pod", "pod-b=tcp://127.0.0.1:9,replay=tcp://127.0.0.1:10,model=other",
                "--model", "llama", "--lora-map", "sql=7", "--block-size", "4", "--seed", "0",
                "--interval", "0.3", "--duration", "1.5", "--json"])
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) >= 3  # a line per interval and a final one
    assert [line["elapsed"] for line in lines] == sorted(line["elapsed"] for line in lines)
    final = lines[-1]
    a, b = final["pods"]["pod-a"], final["pods"]["pod-b"]
    assert a["batches"] >= 1 and a["events"] == 2 * a["batches"] and a["filtered"] == a["batches"]
    assert a["blocks_stored"] == 3 * a["batches"] and a["malformed"] == 0
    assert (b["batches"], b["model"], b["replay_endpoint"]) == (0, "other", "tcp://127.0.0.1:10")
    assert final["index"]["contexts"] == 2    # (llama, -1) and (llama, 7)
    assert final["index"]["entries"] == 3     # the CPU block is not indexed
    assert final["index"]["orphan_blocks"] == 0
    assert final["totals"]["batches"] == a["batches"]


def test_end_to_end_text_until_sigterm(publisher):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "prefixindex", "subscribe", "--pod",
                             f"pod-a={publisher.endpoint},topic=kv-events", "--model", "llama", "--block-size", "4",
                             "--interval", "0.2", "--per-pod"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        header = proc.stdout.readline()
        assert "subscribed to pod-a=" + publisher.endpoint in header
        deadline = time.monotonic() + 10
        line = ""
        while "entries=2" not in line:  # the first two blocks of the default (no LoRA name) context
            assert time.monotonic() < deadline, "no stats line showed the stored blocks"
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    final = [ln for ln in rest.splitlines() if ln.startswith("[")][-1]
    assert "pods=1" in final and "malformed=0" in final and "index contexts=1" in final
    assert "    pod-a: last_seq=" in rest
    assert "pod 'pod-a': adapter 'sql' has no lora_id" in err  # no --lora-map here: reported by name


def test_bad_endpoint_is_an_error_exit(capsys):
    assert main(["--pod", "pod-a=tcp://*:5557", "--model", "m", "--duration", "0"]) == 1
    assert "pod-a" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--pod", "pod-a=tcp://127.0.0.1:5557"], "--model is required"),
    (["--pod", "pod-a"], "NAME=ENDPOINT"),
    (["--pod", "pod-a=tcp://127.0.0.1:5557,colour=red", "--model", "m"], "unknown --pod option"),
    (["--pod", "pod-a=127.0.0.1:5557", "--model", "m"], "ZeroMQ endpoint"),
    (["--pod", "p=tcp://127.0.0.1:1", "--pod", "p=tcp://127.0.0.1:2", "--model", "m"], "its own NAME"),
    (["--pod", "p=tcp://127.0.0.1:1", "--model", "m", "--lora-map", "sql"], "NAME=ID"),
    (["--pod", "p=tcp://127.0.0.1:1", "--model", "m", "--lora-map", "sql=x"], "NAME=ID"),
    (["--pod", "p=tcp://127.0.0.1:1", "--model", "m", "--lora-map", f"sql={2**63}"],
     f"--lora-map sql: the ID must fit in a signed 64-bit integer, got {2**63}"),
    (["--pod", "p=tcp://127.0.0.1:1", "--model", "m", "--interval", "0"], "--interval"),
    # NaN made the loop spin, inf and 1e10 overflowed threading's wait, a NaN --duration never ended
    *[(["--pod", "p=tcp://127.0.0.1:1", "--model", "m", f"{option}={value}"],  # (= for argparse to take -inf)
       f"{option} must be a {kind} number of seconds, at most 2,147,483,648, got {value}")
      for option, kind in (("--interval", "positive"), ("--duration", "non-negative"))
      for value in ("nan", "inf", "-inf", "10000000000.0", "-1.0")],
    (["--pod", "p=tcp://127.0.0.1:1", "--model", "m", "--snapshot", "x", "--snapshot-every", "1e10"],
     "--snapshot-every must be a positive number of seconds, at most 2,147,483,648, got 10000000000.0"),
    (["--pod", "p=tcp://127.0.0.1:1", "--model", "m", "--block-size", "0"], "block_size"),
    ([], "--pod"),
])
def test_argument_errors(argv, message, capsys, monkeypatch):
    def start(self):  # a usage error stops before this; a run would never end (--duration nan, inf)
        raise AssertionError("the subscriber was started")

    monkeypatch.setattr(VLLMSubscriber, "start", start)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_longest_interval_is_a_wait_that_works():
    """MAX_SECONDS (2**31) is within threading's limit (above it a wait is an OverflowError), and a
    run at that --interval starts, ends on --duration and gives the signal handlers back."""
    from prefixindex._tools.subscribe import MAX_SECONDS

    assert MAX_SECONDS == 2**31 <= threading.TIMEOUT_MAX
    done = threading.Event()
    timer = threading.Timer(0.01, done.set)
    timer.start()
    assert done.wait(MAX_SECONDS)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert main(["--pod", "p=tcp://127.0.0.1:9", "--model", "m", "--interval", str(2**31), "--duration", "0.05"]) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_signal_during_the_shutdown_is_ignored(publisher, tmp_path):
    """SIGTERM, then (once the command said it is stopping) SIGTERM and Ctrl-C again: the handlers stay
    until the final save, the last stats line and the metrics server's close are done; exit 0."""
    pytest.importorskip("prometheus_client", reason="the 'metrics' extra is not installed")
    snapshot = tmp_path / "s.pisnap"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # The final save is made to take 0.5 s, so that the signals sent once "stopping" is printed surely
    # land inside the cleanup (a real save of a large index takes longer than that).
    slow_save = ("import sys, time\nfrom prefixindex._subscriber_snapshot import PeriodicSaver\n"
                 "save = PeriodicSaver.save\n"
                 "PeriodicSaver.save = lambda self, now=None: (time.sleep(0.5), save(self, now))[1]\n"
                 "from prefixindex.__main__ import main\nsys.exit(main())\n")
    proc = subprocess.Popen([sys.executable, "-c", slow_save, "subscribe", "--pod",
                             f"pod-a={publisher.endpoint},topic=kv-events", "--model", "llama", "--block-size", "4",
                             "--interval", "0.1", "--snapshot", str(snapshot), "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    err: List[str] = []
    stopping = threading.Event()

    def read_stderr() -> None:  # stderr in a thread: the test must not block on a line that never comes
        for line in proc.stderr:
            err.append(line)
            if line.startswith("stopping on SIGTERM"):
                stopping.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert "subscribed to pod-a=" in proc.stdout.readline()
        assert proc.stdout.readline().startswith("[")  # the loop runs: the handlers are in place
        proc.send_signal(signal.SIGTERM)
        assert stopping.wait(10), "".join(err)
        assert proc.poll() is None  # still cleaning up: the save takes 0.5 s
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)  # (not communicate(): the reader thread owns stderr; stdout fits its pipe)
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert proc.returncode == 0, "".join(err)
    assert rest.splitlines()[-1].startswith("[")  # the last stats line
    assert any(line.startswith(f"saved the snapshot to {snapshot}") for line in err), "".join(err)
    assert snapshot.stat().st_size > 0
    assert "Traceback" not in "".join(err)


def test_pod_parse():
    pod = Pod.parse("default/llama-0=tcp://10.0.0.1:5557,replay=tcp://10.0.0.1:5558,topic=kv-events,model=m")
    assert pod == Pod("default/llama-0", "tcp://10.0.0.1:5557", "tcp://10.0.0.1:5558", "kv-events", "m")
    assert Pod.parse("10.0.0.1:8000=tcp://h:5557") == Pod("10.0.0.1:8000", "tcp://h:5557")
    assert Pod.parse("p=tcp://h:5557,topic=").topic == ""


def test_dispatcher_lists_subscribe():
    from prefixindex.__main__ import main as dispatch

    assert dispatch(["subscribe", "--pod", "p=tcp://*:1", "--model", "m", "--duration", "0"]) == 1


# ---------------------------------------------------------------------------------------------------
# python -m prefixindex vllm-bench (small sizes: these check that it runs and counts, not speed)


def _bench(args: List[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "prefixindex", "vllm-bench", *args, "--json"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)


@pytest.mark.parametrize("argv,message", [
    (["ingest", "--repeat", "0"], "--repeat must be at least 1, got 0"),  # was an IndexError
    (["ingest", "--repeat", "-1"], "--repeat must be at least 1, got -1"),
    (["ingest", "--batches", "0"], "--batches must be at least 1 and at most 16,777,216"),  # ZeroDivisionError
    (["ingest", "--batches", str(2**24 + 1)], "--batches must be at least 1 and at most 16,777,216"),  # the bound
    (["multi", "--publishers", "0"], "--publishers must be at least 1 and at most 10,000"),
    (["multi", "--batches-each", "0"], "--batches-each must be at least 1 and at most 167,772 (with --publishers 100"),
    (["idle", "--seconds", "-1"], "--seconds must be a positive number of seconds"),  # time.sleep's ValueError
    (["idle", "--seconds", "nan"], "--seconds must be a positive number of seconds"),
    (["idle", "--seconds", "inf"], "--seconds must be a positive number of seconds"),  # an OverflowError
    (["idle", "--pods", "-1"], "--pods must be at least 1 and at most 32,000"),
    (["idle", "--pods", str(10**20)], "--pods must be at least 1 and at most 32,000"),
    (["add-pods", "--pods", "0"], "--pods must be at least 1"),  # 0 silently meant the default
    (["warm", "--pods", "20000"], "--pods must be at least 1 and at most 10,000"),
    (["warm", "--missed", "-1"], "--missed must be at least 1"),  # an IndexError in the child
    (["warm", "--missed", "0"], "--missed must be at least 1"),  # a warm restart with nothing to catch up on
])
def test_vllm_bench_argument_errors(argv, message, capsys, monkeypatch):
    from prefixindex._tools import vllm_bench, warm_bench

    def benchmark(*args, **kwargs):  # a usage error stops before any run (some would take for ever)
        raise AssertionError("a benchmark ran")

    for module, name in ((vllm_bench, "multi_ingest_benchmark"), (vllm_bench, "add_pods_benchmark"),
                         (vllm_bench, "idle_benchmark"), (vllm_bench, "flood_benchmark"),
                         (warm_bench, "warm_restart_benchmark")):
        monkeypatch.setattr(module, name, benchmark)
    with pytest.raises(SystemExit) as exc:
        vllm_bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_vllm_bench_ingest_and_multi_lose_nothing():
    out = _bench(["ingest", "--batches", "30"])
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)["ingest"]
    assert r["lost"] is False and r["blocks_indexed"] == r["blocks_sent"] == 30 * 8 * 16 and r["publishers"] == 1
    out = _bench(["multi", "--publishers", "5", "--batches-each", "4"])
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)["multi"]
    assert r["lost"] is False and r["blocks_indexed"] == 5 * 4 * 8 * 16 and r["blocks_per_second"] > 0


def test_vllm_bench_pods_idle_and_flood_report_their_figures():
    out = _bench(["add-pods", "--pods", "50"])
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)["add-pods"]
    assert r["pods"] == 50 and r["add_seconds"] > 0 and r["loop_cpu_ms_per_add"] >= 0
    out = _bench(["idle", "--pods", "100", "--seconds", "0.5"])
    assert out.returncode == 0, out.stderr
    assert 0 <= json.loads(out.stdout)["idle"]["loop_cpu_percent"] < 100
    out = _bench(["flood", "--seconds", "1"])
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)["flood"]
    assert r["messages_sent"] > 0 and r["malformed"] > 0 and r["stop_seconds"] < 5
