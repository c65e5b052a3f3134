"""Usage errors of the commands' numeric options (exit status 2, never a traceback).

argparse's ``type=float`` takes ``nan``, ``inf`` and ``1e300``, and ``type=int`` any size: each check
here names the option and says what it takes, as ``parser.error`` does (status 2).
"""

from __future__ import annotations

import argparse
import math
from typing import Optional

#: The most seconds a command's waits and durations take: 2**31 (68 years), the longest wait the
#: table's own eviction interval takes (docs/decisions.md, D13). Above threading.TIMEOUT_MAX (about
#: 9.2e9 s on 64-bit Linux) an Event.wait or time.sleep is an OverflowError.
MAX_SECONDS = float(2**31)


def check_seconds(parser: argparse.ArgumentParser, option: str, value: float, zero_ok: bool = False) -> None:
    """``value`` must be a finite number of seconds, positive (or zero when ``zero_ok``), at most
    MAX_SECONDS. NaN passes every comparison, so finiteness is tested first."""
    low_ok = value >= 0 if zero_ok else value > 0
    if not (math.isfinite(value) and low_ok and value <= MAX_SECONDS):
        kind = "non-negative" if zero_ok else "positive"
        parser.error(f"{option} must be a {kind} number of seconds, at most {MAX_SECONDS:,.0f}, got {value!r}")


def check_count(parser: argparse.ArgumentParser, option: str, value: int, maximum: Optional[int] = None,
                why: str = "") -> None:
    """``value`` must be an integer from 1 to ``maximum`` (``why`` says where the maximum comes from)."""
    if value < 1 or (maximum is not None and value > maximum):
        limit = f" and at most {maximum:,}{f' ({why})' if why else ''}" if maximum is not None else ""
        parser.error(f"{option} must be at least 1{limit}, got {value}")


def check_vllm_bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``vllm-bench``'s usage errors (status 2) instead of a ZeroDivisionError, an IndexError or a
    table's ValueError deep in a run. Each run's table holds twice the blocks sent, within the table's
    bound of 2**32 prefixes: at most 2**24 batches of 8 events x 16 blocks (warm: 4 x its blocks)."""
    from ..vllm import MAX_PODS_LIMIT

    bound = "the table's bound of 2**32 prefixes"
    check_count(parser, "--batches", args.batches, 2**24, bound)
    check_count(parser, "--publishers", args.publishers, 10_000, "a subscriber's default max_pods")
    check_count(parser, "--batches-each", args.batches_each, 2**24 // args.publishers,
                f"with --publishers {args.publishers:,}, {bound}")
    check_count(parser, "--repeat", args.repeat)
    check_seconds(parser, "--seconds", args.seconds)
    warm = args.scenario in ("warm", "all")
    if args.pods is not None:  # (warm's subscriber keeps the default max_pods, 10,000)
        check_count(parser, "--pods", args.pods, 10_000 if warm else MAX_PODS_LIMIT, "the subscriber's max_pods")
    if warm:
        pods = args.pods or 8
        check_count(parser, "--missed", args.missed, 2**25 // pods - 100, f"with --pods {pods:,}, {bound}")
