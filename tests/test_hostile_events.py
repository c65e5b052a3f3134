"""Hostile events (issue 8: out-of-bounds reads; SPEC Public API: events are immutable; SPEC 8).

Assigning or deleting a field of an event is an AttributeError (checked here, in-process: no table is
involved). Events whose fields were forced anyway, and BlockStored subclasses whose properties answer
differently on each read, go to the table in a child process per backend (hostile_cases/events_cases.py):
a crash or a hang there is a failure that quotes the child's stderr.
"""

from __future__ import annotations

import numpy as np
import pytest

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored

from helpers import BACKENDS
from hostile_cases import runner

import events_cases  # noqa: E402  (on sys.path through runner)


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


def _events():
    return {
        "BlockStored": BlockStored([1, 2], list(range(8)), "m", 3, "pod", 7),
        "BlockRemoved": BlockRemoved([1, 2], "m", 3, "pod"),
        "AllBlocksCleared": AllBlocksCleared("pod", "m", 3),
    }


FIELDS = {
    "BlockStored": ("block_hashes", "tokens", "model_name", "lora_id", "source_pod", "parent_block_hash"),
    "BlockRemoved": ("block_hashes", "model_name", "lora_id", "source_pod"),
    "AllBlocksCleared": ("source_pod", "model_name", "lora_id"),
}
EVENT_FIELDS = [(kind, field) for kind, fields in FIELDS.items() for field in fields]


@pytest.mark.parametrize("kind,field", EVENT_FIELDS)
def test_assigning_a_field_is_an_attribute_error(kind, field):
    event = _events()[kind]
    before = getattr(event, field)
    replacement = np.arange(64, dtype=np.uint64) if field == "block_hashes" else "other"
    with pytest.raises(AttributeError):
        setattr(event, field, replacement)
    assert getattr(event, field) is before


@pytest.mark.parametrize("kind,field", EVENT_FIELDS)
def test_deleting_a_field_is_an_attribute_error(kind, field):
    event = _events()[kind]
    before = getattr(event, field)
    with pytest.raises(AttributeError):
        delattr(event, field)
    assert getattr(event, field) is before


@pytest.mark.parametrize("kind", sorted(FIELDS))
def test_a_new_attribute_is_an_attribute_error(kind):
    with pytest.raises(AttributeError):
        _events()[kind].extra = 1


def _judge(item_id, outcome):
    assert "ok" in outcome, f"{item_id}: an exception other than TypeError/ValueError, or a check after the call failed: {runner.describe(outcome)}"
    result = outcome["ok"]
    values = dict((k, v) for k, v in result["dict"])
    results = values.get("results") or [values["result"]]
    for r in results:
        if r == "unforceable" or str(r).startswith("refused"):
            continue  # the event gives no way in from Python: the attack is closed
        if events_cases.EXPECT[item_id] == "ValueError":
            assert r == "ValueError", f"{item_id}: the arrays disagree, expected ValueError, got {r}"
        else:
            assert r in ("TypeError", "ValueError", "applied"), f"{item_id}: {r}"
    assert values.get("correct", True), f"{item_id}: the event applied is not the one the event holds"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("group", ["events_cases"])
@pytest.mark.parametrize("item_id", list(events_cases.ITEMS))
def test_forced_event_never_reads_out_of_bounds(item_id, group, backend):
    """The call raises TypeError/ValueError (and the index is unchanged) or applies a consistent event;
    the table stays usable. Where rows != hashes or width != 4*block_size, a ValueError."""
    _judge(item_id, runner.item_outcome(group, item_id, backend))
