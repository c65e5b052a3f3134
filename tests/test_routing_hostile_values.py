"""prefixindex.routing given odd values: str subclasses, loads changed after they were checked, loads
and settings past any float, bad clock readings, choices copied, compared, pickled and forged, and pods
that come and go. Each was a wrong answer, a bare error or unbounded growth (a hostile-input search after
issue 8); the hangs are in test_hostile_routing.py. Both backends (the make_table fixture).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
import pickle

import pytest

from prefixindex import metrics
from prefixindex.routing import COUNTED_PODS, PodLoad, Router

from helpers import toks

pytest.importorskip("prometheus_client", reason="prometheus_client (in the 'test' extra) is not installed")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

PODS = ["vllm-0", "vllm-1", "vllm-2"]


class Pod(str, enum.Enum):
    A = "vllm-0"
    B = "vllm-1"
    C = "vllm-2"


# -- names ------------------------------------------------------------------------------------------

def test_a_str_enum_of_pods_is_kept_as_plain_names(router_for):
    router = router_for()
    choices = [router.choose("m", -1, toks(i), list(Pod)) for i in range(3)]
    assert {c.pod for c in choices} <= set(PODS)
    assert all(type(c.pod) is str for c in choices)
    assert all(type(p) is str for c in choices for p in c.cost)
    stats = router.stats()
    assert all(type(p) is str for p in stats["in_flight"]) and all(type(p) is str for p in stats["predictions"])
    # a later call with the plain names is answered with plain names too (the candidate cache)
    plain = router.choose("m", -1, toks(9), list(PODS))
    assert type(plain.pod) is str
    registry = CollectorRegistry()
    metrics.register(router=router, registry=registry)
    text = generate_latest(registry).decode()
    assert 'pod="vllm-0"' in text and "Pod." not in text


def test_names_that_compare_oddly_are_compared_as_their_text(router_for):
    class Folded(str):
        def __eq__(self, other):
            return str(self).lower() == str(other).lower()

        def __hash__(self):
            return hash(str(self).lower())

    router = router_for()
    pods = [Folded(f"Pod{i}") for i in range(12)]  # more than 8 candidates: the ranked path
    choice = router.choose("m", -1, toks(1, 2), pods)
    assert choice.pod in [f"Pod{i}" for i in range(12)] and type(choice.pod) is str


def test_the_candidate_cache_answers_only_lists_of_exact_names(router_for):
    """A remembered candidate list is looked up by equality; an item that compares equal to a cached
    name but is not an exact str gets the full check, as on a router that has cached nothing."""
    class NotAName:
        def __hash__(self):
            return hash("vllm-0")

        def __eq__(self, other):
            return True

    class Folded(str):
        def __eq__(self, other):
            return str.lower(self) == str.lower(str(other))

        def __hash__(self):
            return hash(str.lower(self))

    router = router_for(max_predicted_entries=0)
    for pods in (["vllm-0"], ("vllm-0",)):
        router.finished(router.choose("m", -1, toks(1), pods))  # remembered
    for pods in ([NotAName()], (NotAName(),)):
        with pytest.raises(TypeError, match="pods must hold pod names \\(str\\), got NotAName"):
            router.choose("m", -1, toks(1), pods)
    for pods in ([Folded("VLLM-0")], (Folded("VLLM-0"),)):
        choice = router.choose("m", -1, toks(1), pods)
        assert choice.pod == "VLLM-0" and type(choice.pod) is str and list(choice.cost) == ["VLLM-0"]
        router.finished(choice)
    assert router.stats()["decisions"] == 4 and router.stats()["in_flight"] == {}
    assert list(router._candidate_cache) == [("vllm-0",)]  # neither was cached under the name it equals


def test_a_model_name_subclass_keys_predictions_by_its_text(router_for):
    class Model(str):
        pass

    router = router_for()
    router.finished(router.choose(Model("m"), -1, toks(1, 2), PODS))
    assert [type(k[0]) for k in router._predicted] == [str]
    again = router.choose("m", -1, toks(1, 2), PODS)
    assert again.predicted[again.pod] == 2  # the prediction made under the subclass is the same context's


def test_an_empty_pod_name_is_refused(router_for):
    router = router_for()
    with pytest.raises(ValueError, match="empty name"):
        router.choose("m", -1, toks(1), ["vllm-0", ""])
    assert router.stats()["decisions"] == 0


# -- loads ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, error, words", [
    ("running", -1, ValueError, "PodLoad.running must be in [0, 2**53), got -1"),
    ("running", math.nan, TypeError, "PodLoad.running must be an int, not float"),
    ("waiting", None, TypeError, "PodLoad.waiting must be an int, not NoneType"),
    ("kv_usage", math.nan, ValueError, "PodLoad.kv_usage must be in [0, 1], got nan"),
    ("kv_usage", "x", TypeError, "PodLoad.kv_usage must be a float in [0, 1] or None, not str"),
    pytest.param("kv_usage", 10**400, ValueError, "PodLoad.kv_usage must be in [0, 1], got an int of 1329 bits",
                 id="kv_usage-past-any-float"),
    pytest.param("kv_usage", -10**400, ValueError, "PodLoad.kv_usage must be in [0, 1], got an int of 1329 bits",
                 id="kv_usage-below-any-float"),
    pytest.param("running", 10**400, ValueError, "PodLoad.running must be in [0, 2**53), got an int of 1329 bits",
                 id="running-past-any-float"),
    pytest.param("waiting", -10**400, ValueError, "PodLoad.waiting must be in [0, 2**53), got an int of 1329 bits",
                 id="waiting-below-any-float"),
])
def test_a_podload_changed_after_its_check_is_checked_again(router_for, field, value, error, words):
    router = router_for()
    load = PodLoad()
    object.__setattr__(load, field, value)
    with pytest.raises(error) as info:
        router.choose("m", -1, toks(1), {"vllm-0": PodLoad(), "vllm-1": load})
    assert str(info.value) == f"pods['vllm-1']: {words}"
    assert router.stats()["decisions"] == 0 and router.stats()["in_flight"] == {}


@pytest.mark.parametrize("field", ["running", "waiting", "kv_usage"])
def test_a_podload_field_past_any_float_is_a_value_error_naming_it(field):
    with pytest.raises(ValueError, match=f"PodLoad.{field} must be in .*, got an int of 1329 bits"):
        PodLoad(**{field: 10**400})


class _SneakyInt(int):  # its conversions answer -5; the library reads its own value (_events._exact_int)
    def __int__(self):
        return -5

    def __index__(self):
        return -5

    def __float__(self):
        return -5.0


class _SneakyFloat(float):
    def __float__(self):
        return 0.5


def test_a_podload_keeps_a_subclass_own_value_as_checked():
    assert PodLoad(running=_SneakyInt(3), kv_usage=_SneakyInt(1)) == PodLoad(3, 0, 1.0)
    assert type(PodLoad(kv_usage=_SneakyFloat(0.25)).kv_usage) is float
    assert PodLoad(kv_usage=_SneakyFloat(0.25)).kv_usage == 0.25
    for usage in (_SneakyFloat(7.0), _SneakyInt(7)):  # __float__ would say 0.5 or -5.0: what is kept is 7
        with pytest.raises(ValueError, match="PodLoad.kv_usage must be in \\[0, 1\\], got 7.0"):
            PodLoad(kv_usage=usage)


def test_a_podload_counts_requests_a_float_holds():
    assert PodLoad(running=2**53 - 1).running == 2**53 - 1
    with pytest.raises(ValueError, match=r"PodLoad.waiting must be in \[0, 2\*\*53\), got 9007199254740992"):
        PodLoad(waiting=2**53)
    with pytest.raises(ValueError, match="got an int of 665 bits"):
        PodLoad(running=10**200)


@pytest.mark.parametrize("settings, running", [({"load_exponent": 20.0}, 2**53 - 1), ({"load_exponent": 100.0}, 2000),
                                               ({"load_exponent": 1000.0}, 3)])
def test_a_load_past_any_float_costs_infinity(router_for, settings, running):
    router = router_for(**settings)
    choice = router.choose("m", -1, toks(1), {"vllm-0": PodLoad(running=running), "vllm-1": PodLoad()})
    assert choice.pod == "vllm-1" and choice.cost["vllm-0"] == math.inf


def test_an_unweighted_load_past_any_float_costs_nothing(router_for):
    router = router_for(load_exponent=1000.0, request_tokens=0.0)
    choice = router.choose("m", -1, toks(1), {"vllm-0": PodLoad(running=3), "vllm-1": PodLoad()})
    assert choice.cost["vllm-0"] == choice.cost["vllm-1"] == 4.0  # not inf * 0 = nan


@pytest.mark.parametrize("name", ["prefill_weight", "request_tokens", "queue_tokens", "load_exponent",
                                  "predicted_ttl_seconds"])
def test_a_setting_past_any_float_names_the_setting(make_table, name):
    with pytest.raises(ValueError, match=f"setting {name} must be a finite number, got an int of 1329 bits"):
        Router(make_table(), **{name: 10**400})


@pytest.mark.parametrize("name, kept", [("max_predicted_entries", 7), ("guard_requests", 7), ("guard_idle_pods", 7),
                                        ("prefill_weight", 7.0), ("queue_tokens", 7.0),
                                        ("predicted_ttl_seconds", 7.0)])
def test_an_int_subclass_setting_is_its_own_value_checked_as_kept(make_table, name, kept):
    """Sneaky(7) converts to -5: the setting is its own value, 7, and that is what the check sees."""
    got = Router(make_table(), **{name: _SneakyInt(7)}).settings[name]
    assert got == kept and type(got) is type(kept)
    with pytest.raises(ValueError, match=f"setting {name} must be .*, got -3"):
        Router(make_table(), **{name: type("Shifty", (int,), {"__int__": lambda self: 5,
                                                             "__float__": lambda self: 5.0})(-3)})
    assert Router(make_table(), prefill_weight=_SneakyFloat(2.0)).settings["prefill_weight"] == 2.0


# -- the clock --------------------------------------------------------------------------------------

@pytest.mark.parametrize("reading, error, words", [
    (math.nan, ValueError, "the Router's clock must return finite seconds, got nan"),
    (math.inf, ValueError, "the Router's clock must return finite seconds, got inf"),
    (1 + 2j, TypeError, "the Router's clock must return seconds, got complex"),
    ("soon", ValueError, "the Router's clock must return seconds, got str"),
])
def test_a_bad_clock_reading_is_refused_and_poisons_nothing(make_table, reading, error, words):
    readings = iter([reading])
    now = [0.0]

    def clock():
        return next(readings, now[0])

    router = Router(make_table(), clock=clock)
    with pytest.raises(error, match=words.replace("(", r"\(")):
        router.choose("m", -1, toks(1, 2), PODS)
    assert router.stats()["decisions"] == 0
    router.finished(router.choose("m", -1, toks(1, 2), PODS))
    now[0] = 1000.0  # the prediction expires as it should
    stats = router.stats()
    assert stats["predicted_entries"] == 0 and sum(p["expired"] for p in stats["predictions"].values()) == 1


# -- choices ----------------------------------------------------------------------------------------

def test_choices_are_equal_only_to_themselves_and_hashable(router_for):
    router = router_for(max_predicted_entries=0)
    first = router.choose("m", -1, toks(1, 2), PODS)
    router.finished(first)
    second = router.choose("m", -1, toks(1, 2), PODS)  # the same content, another request
    assert first == first and first != second and hash(first) != hash(second)
    pending = [first, second]
    pending.remove(second)
    assert pending == [first] and second not in pending and {first: 1}[first] == 1
    router.finished(second)


def test_a_copy_of_a_choice_is_the_choice_and_pickling_one_is_refused(router_for):
    router = router_for()
    choice = router.choose("m", -1, toks(1), PODS)
    assert copy.copy(choice) is choice and copy.deepcopy({"c": choice})["c"] is choice
    with pytest.raises(TypeError, match="a Choice cannot be pickled"):
        pickle.dumps(choice)
    router.finished(copy.deepcopy(choice))
    assert router.stats()["in_flight"] == {}


def test_a_choices_hashes_cannot_be_made_writeable(router_for):
    choice = router_for().choose("m", -1, toks(1, 2), PODS)
    with pytest.raises(ValueError, match="cannot set WRITEABLE flag"):
        choice.prefix_hashes.flags.writeable = True
    assert list(choice.prefix_hashes) == list(choice.prefix_hashes.copy())


def test_a_second_settle_deferred_inside_a_section_is_refused(router_for):
    """A finalizer that runs inside a router section (the garbage collector may run one between any two
    bytecodes) and reports a request twice: the first call is deferred to the section's end, the
    second is refused at once, as it would be outside. The section is opened by hand and the finalizer
    run by dropping its last reference, so that nothing depends on when the collector runs."""
    router = router_for()
    errors = []
    done, decoding = router.choose("m", -1, toks(1), PODS), router.choose("m", -1, toks(2), PODS)

    class ReportsTwice:
        def __del__(self):
            for call, choice in ((router.finished, done), (router.finished, done), (router.prefill_done, done),
                                 (router.prefill_done, decoding), (router.prefill_done, decoding),
                                 (router.finished, decoding)):
                try:
                    call(choice)
                except ValueError as exc:
                    errors.append(str(exc))

    reporter = ReportsTwice()
    with router._lock:  # a section, as the router's own calls open them
        del reporter  # the finalizer runs now, inside the section
        assert len(router._lock.deferred) == 3  # the calls accepted, not applied yet
        assert router.stats()["in_flight"] != {}
    assert errors == ["finished: this choice has already finished",
                      "prefill_done: this choice has already finished",
                      "prefill_done: this choice has already been through prefill_done"]
    assert router.stats()["in_flight"] == {} and router._concurrency == 1
    with pytest.raises(ValueError, match="finished: this choice has already finished"):
        router.finished(decoding)


def test_a_forged_ticket_is_a_clear_error_and_changes_nothing(router_for):
    router = router_for()
    choice = router.choose("m", -1, toks(1), PODS)
    forged = type(choice._ticket)(router, "nobody", 4)
    fake = dataclasses.replace(choice, _ticket=forged)
    for call in (router.prefill_done, router.finished):
        with pytest.raises(ValueError, match="not one of this router's requests in flight"):
            call(fake)
    assert forged.state == 0 and router.stats()["in_flight"] == {choice.pod: {"prefilling": 1, "decoding": 0}}
    router.finished(choice)


# -- pods that come and go ---------------------------------------------------------------------------

def test_the_prediction_counters_of_idle_pods_are_forgotten(router_for, clock):
    router = router_for(predicted_ttl_seconds=1.0)
    steady = "steady-pod"
    for i in range(3 * COUNTED_PODS):
        pods = [f"gen{i}-a", f"gen{i}-b"] if i % 10 else [steady]
        router.finished(router.choose("m", -1, toks(i, i + 1), pods))
        clock.now += 2.0  # each prediction expires before the next choice
    predictions = router.stats()["predictions"]
    assert len(predictions) <= 2 * COUNTED_PODS, len(predictions)
    assert len(router._made) <= 2 * COUNTED_PODS
    # a pod with a request in flight keeps its counters through every sweep
    busy = router.choose("m", -1, toks(1), ["busy-pod"])
    for i in range(3 * COUNTED_PODS):
        router.finished(router.choose("m", -1, toks(i, 7), [f"late{i}"]))
        clock.now += 2.0
    assert router.stats()["predictions"]["busy-pod"]["made"] == 1
    router.finished(busy)


def test_a_pod_name_utf8_cannot_write_does_not_break_the_scrape(router_for, make_table):
    table = make_table()
    router = router_for(table)
    router.choose("m", -1, toks(1), ["bad-\udcff"])
    registry = CollectorRegistry()
    metrics.register(table=table, router=router, registry=registry)
    text = generate_latest(registry).decode()
    assert 'pod="bad-\\\\udcff"' in text
    assert "prefixindex_table_entries" in text
