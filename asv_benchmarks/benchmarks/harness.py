"""What asv's timing adds to each figure on this machine: one call of a no-op, after a setup.

asv here times one call per sample right after ``setup`` (see _common.py), so this overhead (a few
dozen nanoseconds) is inside every ``time_`` figure of the suite; it matters next to sub-microsecond
calls. ``python -m prefixindex bench`` times batches instead and reports its own loop overhead.
"""

from ._common import MICRO_REPEAT


class HarnessOverhead:
    repeat = MICRO_REPEAT
    rounds = 2

    def setup(self) -> None:
        self.value = 0

    def time_noop(self) -> None:
        pass
