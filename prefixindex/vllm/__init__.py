"""Feed a prefix index from vLLM pods' KV-cache event publishers (ZeroMQ).

    from prefixindex import SyncPrefixHashTable
    from prefixindex.vllm import Pod, VLLMSubscriber

    table = SyncPrefixHashTable(block_size=16)
    with VLLMSubscriber(table, [Pod("llama-0", "tcp://10.0.0.1:5557", replay_endpoint="tcp://10.0.0.1:5558")],
                        model="meta-llama/Llama-3.1-8B-Instruct") as sub:
        ...  # the router calls table.match(...) while the subscriber keeps the index current
        print(sub.stats()["pods"]["llama-0"])

docs/vllm.md describes all of it. The package along its concerns:

- ``_pod``: ``Pod``, ``data_parallel_pods`` (one pod per data-parallel rank) and the CLI's pod spelling;
- ``_subscriber``: ``VLLMSubscriber``, which owns the pods and starts and stops the loop;
- ``_loop``: the thread that owns every socket (SUB per pod, DEALER per replay, a wake-up socket pair);
- ``_stream``: one pod's sequence numbers, gaps, replays and restarts, and applying its batches;
- ``_wire``: decoding of the frames and the msgpack payloads; ``_convert``: wire events -> index events.

``python -m prefixindex subscribe`` (prefixindex/_tools/subscribe.py) runs a subscriber from the shell.
Needs pyzmq and msgspec: ``python -m pip install -e '.[vllm]'`` in a checkout of this repository.
"""

from __future__ import annotations

try:
    import msgspec  # noqa: F401  (needed by _wire; imported here for one clear error)
    import zmq  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError("prefixindex.vllm needs pyzmq and msgspec: install the optional extra with "
                      "python -m pip install -e '.[vllm]' in a checkout of the prefixindex repository "
                      "(the 'vllm' extra, prefixindex[vllm])") from _exc

from ._pod import DEFAULT_RANK_NAME, Pod, data_parallel_pods
from ._subscriber import GAUGE_KEYS, MAX_PODS_LIMIT, STAT_KEYS, VLLMSubscriber
from ._wire import FULL_ATTENTION_KINDS

__all__ = ["DEFAULT_RANK_NAME", "FULL_ATTENTION_KINDS", "GAUGE_KEYS", "MAX_PODS_LIMIT", "Pod", "STAT_KEYS",
           "VLLMSubscriber", "data_parallel_pods"]
