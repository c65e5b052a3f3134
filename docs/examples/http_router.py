"""A minimal HTTP router in front of vLLM pods, with prefixindex.routing (standard library only).

POST /v1/completions with a JSON body {"model": ..., "prompt": ...}: the router tokenises the prompt,
asks Router.choose for a pod, forwards the body unchanged to that pod's OpenAI-compatible server, and
returns its answer (with the chosen pod in an X-Routed-To header). prefill_done is called when the
pod's response headers arrive (the first token exists by then), finished when the exchange is over,
whether it succeeded or not.

Run it with the pods' base URLs (the index itself is fed by prefixindex.vllm.VLLMSubscriber):

    python http_router.py --pod vllm-0=http://10.0.0.11:8000 --pod vllm-1=http://10.0.0.12:8000
"""

from __future__ import annotations

import argparse
import http.client
import json
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List

from prefixindex import SyncPrefixHashTable
from prefixindex.routing import Router


def byte_tokenizer(text: str) -> List[int]:
    """A stand-in tokenizer: one token per UTF-8 byte. Use the model's own tokenizer in production
    (for example transformers.AutoTokenizer.from_pretrained(model).encode), or the index's blocks will
    not line up with the engine's."""
    return list(text.encode("utf-8"))


def make_server(router: Router, upstreams: Dict[str, str], tokenize: Callable[[str], List[int]] = byte_tokenizer,
                host: str = "127.0.0.1", port: int = 8080, timeout: float = 600.0) -> ThreadingHTTPServer:
    """An HTTP server (one thread per request; Router is thread-safe) routing to ``upstreams``
    (pod name -> base URL such as http://10.0.0.11:8000)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                request = json.loads(body)
                model, prompt = request["model"], request["prompt"]
                if not isinstance(model, str) or not isinstance(prompt, str):
                    raise TypeError("model and prompt must be strings")
            except (ValueError, KeyError, TypeError) as exc:
                return self._reply(400, {"error": f"bad request: {exc}"})
            choice = router.choose(model, -1, tokenize(prompt), list(upstreams))
            status: int
            payload: object
            try:
                url = urllib.parse.urlsplit(upstreams[choice.pod])
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
                try:
                    conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    router.prefill_done(choice)  # the pod has answered: its first token exists
                    status, payload = response.status, response.read()
                finally:
                    conn.close()
            except OSError as exc:
                status, payload = 502, {"error": f"pod {choice.pod} failed: {exc}"}
            finally:
                router.finished(choice)  # always, and before the client hears back
            self._reply(status, payload, choice.pod)

        def _reply(self, status: int, payload: object, pod: str = "") -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if pod:
                self.send_header("X-Routed-To", pod)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # quiet by default
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pod", action="append", required=True, metavar="NAME=URL")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    upstreams = dict(spec.split("=", 1) for spec in args.pod)
    table = SyncPrefixHashTable(block_size=16)  # feed it with prefixindex.vllm.VLLMSubscriber
    server = make_server(Router(table), upstreams, port=args.port)
    print(f"routing on http://127.0.0.1:{args.port} to {', '.join(upstreams)}")
    server.serve_forever()


if __name__ == "__main__":
    main()
