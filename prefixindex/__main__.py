"""python -m prefixindex {demo,info,bench,subscribe,snapshot-info} ..."""

from __future__ import annotations

import sys
from typing import List, Optional

COMMANDS = {
    "demo": ("prefixindex._demo", "route synthetic traffic through the index and print hit rate and latency"),
    "info": ("prefixindex._info", "print the backend, the configuration and the versions in use"),
    "bench": ("prefixindex._bench", "time both backends on the standard workloads, one table of medians"),
    "subscribe": ("prefixindex.vllm", "subscribe to vLLM pods' KV-event publishers and print index stats"),
    "snapshot-info": ("prefixindex._tools.snapshot_info", "check a snapshot file and print what it holds"),
}


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: python -m prefixindex {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        return 0 if args and args[0] in ("-h", "--help") else 2
    import importlib

    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
