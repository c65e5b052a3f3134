"""What a pod is to the subscriber: ``Pod`` (one vLLM publisher), the data-parallel naming rule, and the
``NAME=ENDPOINT,...`` spelling of the command line. Plain Python: no pyzmq or msgspec needed here."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from .._events import check_lora_id, check_str

__all__ = ["DEFAULT_RANK_NAME", "Pod", "RankName", "check_lora_map", "data_parallel_pods", "parse_pod"]

#: How ``data_parallel_pods`` names rank r of server ``name`` unless told otherwise (docs/vllm.md, V1).
DEFAULT_RANK_NAME = "{name}/dp{rank}"

RankName = Union[str, Callable[[str, int], str]]


@dataclasses.dataclass(frozen=True)
class Pod:
    """One vLLM publisher (one engine, one cache, one sequence of batches).

    - ``name``: the pod name the index stores (what the router passes in ``ready_pods``).
    - ``endpoint``: where vLLM's PUB socket is, as the subscriber connects to it (``tcp://HOST:5557``,
      ``tcp://[fd00::1]:5557``).
    - ``replay_endpoint``: vLLM's replay ROUTER socket (``tcp://HOST:5558``), or None: gaps then stay gaps.
    - ``topic``: the topic vLLM publishes under (its ``topic`` setting; empty by default).
    - ``model``: the model name of the index contexts; None takes the subscriber's ``model``.
    - ``lora_map``: adapter name -> lora_id for this pod, on top of the subscriber's ``lora_map``.
    - ``data_parallel_rank``: the vLLM data-parallel rank this publisher belongs to, or None. When set,
      a batch that names another rank is not this engine's: it is skipped and counted in ``other_rank``.
    """

    name: str
    endpoint: str
    replay_endpoint: Optional[str] = None
    topic: str = ""
    model: Optional[str] = None
    lora_map: Optional[Mapping[str, int]] = None
    data_parallel_rank: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"Pod.name must be a str, not {type(self.name).__name__}")
        if not self.name:
            raise ValueError("Pod.name must not be empty (the index's '' means every pod)")
        for field in ("endpoint", "replay_endpoint"):
            value = getattr(self, field)
            if value is None and field == "replay_endpoint":
                continue
            if not isinstance(value, str):
                raise TypeError(f"Pod.{field} must be a str, not {type(value).__name__}")
            if "://" not in value:
                raise ValueError(f"Pod.{field} must be a ZeroMQ endpoint such as tcp://HOST:5557, got {value!r}")
        if not isinstance(self.topic, str):
            raise TypeError(f"Pod.topic must be a str, not {type(self.topic).__name__}")
        if self.model is not None and not isinstance(self.model, str):
            raise TypeError(f"Pod.model must be a str or None, not {type(self.model).__name__}")
        if self.lora_map is not None:
            check_lora_map(self.lora_map, "Pod.lora_map")
        rank = self.data_parallel_rank
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
            raise ValueError(f"Pod.data_parallel_rank must be None or an int >= 0, got {rank!r}")

    @classmethod
    def parse(cls, text: str) -> "Pod":
        """``NAME=ENDPOINT[,replay=ENDPOINT][,topic=T][,model=M][,rank=R]``, as the CLI's ``--pod`` takes it."""
        return parse_pod(text)


def parse_pod(text: str) -> Pod:
    head, *options = text.split(",")
    name, sep, endpoint = head.partition("=")
    if not sep or not name or not endpoint:
        raise ValueError(f"--pod must be NAME=ENDPOINT[,replay=ENDPOINT][,topic=T][,model=M][,rank=R], got {text!r}")
    fields: Dict[str, Any] = {}
    keys = {"replay": "replay_endpoint", "topic": "topic", "model": "model", "rank": "data_parallel_rank"}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"unknown --pod option {option!r} in {text!r} (known: replay=, topic=, model=, rank=)")
        if key == "rank":
            if not value.isdigit():
                raise ValueError(f"--pod rank= must be an int >= 0, got {value!r}")
            fields[keys[key]] = int(value)
        else:
            fields[keys[key]] = value
    return Pod(name, endpoint, **fields)


def check_lora_map(lora_map: Any, what: str) -> Dict[str, int]:
    if not isinstance(lora_map, Mapping):
        raise TypeError(f"{what} must be a mapping of adapter name -> lora_id, not {type(lora_map).__name__}")
    out = {}
    for name, lora_id in lora_map.items():
        if not isinstance(name, str):
            raise TypeError(f"{what} keys must be adapter names (str), got {type(name).__name__}")
        if not isinstance(lora_id, int) or isinstance(lora_id, bool):
            raise TypeError(f"{what}[{name!r}] must be an int lora_id, not {type(lora_id).__name__}")
        # the index's own checks, now rather than as every mapped event is refused (malformed) later:
        # a lora_id past 64 bits, and a name or id of a subclass kept as its plain value
        out[check_str(name, f"{what} key")] = check_lora_id(lora_id, f"{what}[{name!r}]")
    return out


_PORT = re.compile(r"^(?P<head>[a-z]+://.*:)(?P<port>\d+)$")


def _offset_port(endpoint: str, offset: int) -> str:
    """vLLM's rule for data parallelism: rank r publishes on the configured port + r."""
    m = _PORT.match(endpoint)
    if m is None:
        raise ValueError(f"data_parallel_pods needs tcp://HOST:PORT endpoints, got {endpoint!r}")
    return f"{m.group('head')}{int(m.group('port')) + offset}"


def data_parallel_pods(name: str, endpoint: str, size: int, *, replay_endpoint: Optional[str] = None,
                       rank_name: RankName = DEFAULT_RANK_NAME, first_rank: int = 0, **fields: Any) -> List[Pod]:
    """One ``Pod`` per data-parallel rank of one vLLM server (docs/vllm.md, V1).

    vLLM's rank r publishes on the configured port + r (its replay socket too) and has its own cache and
    sequence numbers, so each rank is a pod of its own. ``endpoint``/``replay_endpoint`` are rank 0's
    (``first_rank``'s on a server that runs ranks from there). ``rank_name`` names rank r: a format
    string with ``{name}`` and ``{rank}`` (default ``"{name}/dp{rank}"``) or a function (name, rank) -> str;
    use the names the router gives the ranks. ``fields`` go to every Pod (topic, model, lora_map).
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if not isinstance(first_rank, int) or isinstance(first_rank, bool) or first_rank < 0:
        raise ValueError(f"first_rank must be an int >= 0, got {first_rank!r}")
    pods = []
    for i in range(size):
        rank = first_rank + i
        if callable(rank_name):
            pod_name = rank_name(name, rank)
        elif isinstance(rank_name, str):
            pod_name = rank_name.format(name=name, rank=rank)
        else:
            raise TypeError(f"rank_name must be a format string or a function, not {type(rank_name).__name__}")
        pods.append(Pod(pod_name, _offset_port(endpoint, i),
                        None if replay_endpoint is None else _offset_port(replay_endpoint, i),
                        data_parallel_rank=rank, **fields))
    if len({p.name for p in pods}) != len(pods):
        raise ValueError(f"rank_name gives two ranks the same name: {[p.name for p in pods]}")
    return pods
