"""docs/examples/http_router.py end to end, against fake upstream pods on 127.0.0.1 started here,
and the doc shows the file verbatim."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List

import pytest

from prefixindex import BlockStored
from prefixindex.routing import Router

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "http_router.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("http_router_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakePod:
    """An OpenAI-compatible server that answers with its own name and records what it was sent."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.received: List[Dict[str, Any]] = []
        pod = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                pod.received.append({"path": self.path, "body": body})
                data = json.dumps({"served_by": pod.name, "choices": [{"text": "ok"}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def serving():
    started: List[Any] = []

    def start(server: Any) -> str:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(5)


def post(url: str, body: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_routes_to_the_pod_holding_the_prompt(make_table, serving):
    example = load_example()
    pods = {name: FakePod(name) for name in ("vllm-0", "vllm-1", "vllm-2")}
    try:
        table = make_table(block_size=4)
        system = "You are a helpful assistant. Answer briefly. " * 4
        tokens = example.byte_tokenizer(system)
        n = len(tokens) // 4 * 4
        table.process_block_stored(BlockStored(list(range(1, n // 4 + 1)), tokens[:n], "llama", -1, "vllm-1", None))
        router = Router(table)
        url = serving(example.make_server(router, {p: pod.url for p, pod in pods.items()}, port=0))

        status, headers, answer = post(url, {"model": "llama", "prompt": system + "What is 2+2?"})
        assert status == 200 and answer["served_by"] == "vllm-1" and headers["X-Routed-To"] == "vllm-1"
        assert pods["vllm-1"].received == [{"path": "/v1/completions",
                                            "body": {"model": "llama", "prompt": system + "What is 2+2?"}}]
        assert not pods["vllm-0"].received and not pods["vllm-2"].received
        # a prompt nobody holds goes to a pod too, and every request is finished afterwards
        status, headers, answer = post(url, {"model": "llama", "prompt": "unrelated " * 10})
        assert status == 200 and answer["served_by"] == headers["X-Routed-To"]
        stats = router.stats()
        assert stats["decisions"] == 2 and stats["in_flight"] == {}
        # bad requests are refused before anything is chosen
        status, _, answer = post(url, b"not json")
        assert status == 400 and "bad request" in answer["error"]
        status, _, _ = post(url, {"model": "llama"})
        assert status == 400 and router.stats()["decisions"] == 2
    finally:
        for pod in pods.values():
            pod.close()


def test_a_failing_pod_still_finishes_the_request(make_table, serving):
    example = load_example()
    broken = FakePod("vllm-0", status=500)
    dead_url = broken.url.replace(broken.url.rsplit(":", 1)[1], "1")  # port 1: nothing listens
    try:
        router = Router(make_table(block_size=4))
        url = serving(example.make_server(router, {"vllm-0": broken.url}, port=0))
        status, headers, answer = post(url, {"model": "llama", "prompt": "hello there, pod"})
        assert status == 500 and headers["X-Routed-To"] == "vllm-0"  # the pod's own status passes through
        assert router.stats()["in_flight"] == {}
        router_dead = Router(make_table(block_size=4))
        url = serving(example.make_server(router_dead, {"vllm-9": dead_url}, port=0))
        status, _, answer = post(url, {"model": "llama", "prompt": "hello there, pod"})
        assert status == 502 and "vllm-9" in answer["error"]
        assert router_dead.stats()["in_flight"] == {} and router_dead.stats()["decisions"] == 1
    finally:
        broken.close()


def test_the_doc_shows_the_example_verbatim():
    doc = (ROOT / "docs" / "routing.md").read_text()
    source = EXAMPLE.read_text()
    assert f"```python\n{source}```" in doc
