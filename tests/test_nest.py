"""Tests of the `nest` module (nest/nest_pybind.cc): every function, its errors, and leaks."""

import collections
import gc
import sys

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nest

Point = collections.namedtuple("Point", ["x", "y"])


def sample():
    """A nest with every container kind, dict keys out of order, and empty containers."""
    return {"b": [1, (2, 3)], "a": {"z": 4, "y": None}, "c": Point(5, []), "d": ()}


SAMPLE_FLAT = [None, 4, 1, 2, 3, 5]  # "a" (by key: "y", "z"), "b", "c"; "d" has no leaves.


def reference_flatten(n):
    """The specification of flatten(), in pure Python."""
    if isinstance(n, dict) and type(n) is dict:
        return [leaf for key in sorted(n) for leaf in reference_flatten(n[key])]
    if type(n) in (list, tuple) or (isinstance(n, tuple) and hasattr(type(n), "_fields")):
        return [leaf for item in n for leaf in reference_flatten(item)]
    return [n]


def assert_same_nest(a, b):
    """Equal values, the same container types everywhere and the same dict key order."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_nest(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_nest(x, y)
    else:
        assert a == b


# --- map ------------------------------------------------------------------------------------


def test_map_keeps_container_types_and_dict_order():
    out = nest.map(lambda x: -1 if x is None else 10 * x, sample())
    assert_same_nest(out, {"b": [10, (20, 30)], "a": {"z": 40, "y": -1}, "c": Point(50, []), "d": ()})


def test_map_calls_f_in_flatten_order():
    seen = []
    nest.map(seen.append, sample())
    assert seen == SAMPLE_FLAT


def test_map_returns_new_containers():
    n = sample()
    out = nest.map(lambda x: x, n)
    assert out == n
    assert out is not n and out["b"] is not n["b"] and out["a"] is not n["a"]


@pytest.mark.parametrize(
    "leaf",
    [7, None, "text", b"bytes", 1.5, collections.OrderedDict(a=1), collections.UserList([1])],
    ids=repr,
)
def test_anything_else_is_a_leaf(leaf):
    assert nest.map(lambda x: [x], leaf) == [leaf]
    assert nest.flatten([leaf]) == [leaf]
    assert nest.front((leaf,)) is leaf


def test_subclasses_of_list_and_dict_are_leaves():
    class MyList(list):
        pass

    class MyDict(dict):
        pass

    n = [MyList([1, 2]), MyDict(a=1)]
    assert nest.flatten(n) == n


def test_numpy_arrays_are_leaves():
    np = pytest.importorskip("numpy")
    n = {"obs": np.zeros((2, 3)), "state": (np.ones(4), np.arange(2))}
    out = nest.map(lambda x: x.shape, n)
    assert out == {"obs": (2, 3), "state": ((4,), (2,))}


# --- flatten, pack_as, front, for_each ------------------------------------------------------


def test_flatten_visits_dicts_in_sorted_key_order():
    assert nest.flatten(sample()) == SAMPLE_FLAT
    assert nest.flatten({"b": 1, "a": 2, "c": {"z": 3, "x": 4}}) == [2, 1, 4, 3]


def test_flatten_of_a_leaf_and_of_empty_containers():
    assert nest.flatten(3) == [3]
    assert nest.flatten([]) == []
    assert nest.flatten({"a": (), "b": [{}]}) == []


def test_pack_as_is_the_inverse_of_flatten():
    n = sample()
    assert_same_nest(nest.pack_as(n, nest.flatten(n)), n)
    expected = {"b": [2, (3, 4)], "a": {"z": 1, "y": 0}, "c": Point(5, []), "d": ()}
    assert_same_nest(nest.pack_as(n, tuple(range(6))), expected)
    assert nest.pack_as(5, ["leaf"]) == "leaf"
    assert nest.pack_as([], []) == []


@pytest.mark.parametrize("count", [0, 5, 7])
def test_pack_as_with_the_wrong_number_of_values(count):
    with pytest.raises(ValueError, match=rf"^nest.pack_as: the structure has 6 leaves, but {count} values were given$"):
        nest.pack_as(sample(), list(range(count)))


def test_pack_as_needs_a_sequence():
    with pytest.raises(TypeError, match="flat must be a sequence"):
        nest.pack_as([1], 5)


def test_front():
    assert nest.front(sample()) is None  # sample()["a"]["y"]
    assert nest.front([[], {"b": 2, "a": ()}, 3]) == 2
    assert nest.front(8) == 8
    with pytest.raises(ValueError, match="no leaves"):
        nest.front({"a": [], "b": ((),)})


def test_for_each():
    seen = []
    assert nest.for_each(seen.append, sample()) is None
    assert seen == SAMPLE_FLAT


# --- map_many, map_many2 --------------------------------------------------------------------


def test_map_many_passes_a_tuple_of_leaves():
    a = sample()
    b = nest.map(lambda x: 0 if x is None else 100 * x, a)
    out = nest.map_many(lambda leaves: leaves, a, b, a)
    assert out["b"] == [(1, 100, 1), ((2, 200, 2), (3, 300, 3))]
    assert out["c"] == Point((5, 500, 5), [])
    assert list(out["a"]) == ["z", "y"]
    assert nest.map_many(lambda leaves: leaves, [1]) == [(1,)]


def test_map_many2_calls_f_with_two_leaves():
    out = nest.map_many2(lambda x, y: x - y, {"a": [5, 6], "b": 1}, {"b": 1, "a": [1, 2]})
    assert out == {"a": [4, 4], "b": 0}
    assert nest.map_many2(lambda x, y: (x, y), "leaf", 3) == ("leaf", 3)


def test_map_many_leaves_may_differ_in_type():
    assert nest.map_many2(lambda x, y: (x, y), [1, None], ["a", b"b"]) == [(1, "a"), (None, b"b")]


def test_map_many_needs_a_nest():
    with pytest.raises(TypeError, match="at least one nest"):
        nest.map_many(lambda leaves: leaves)


MISMATCHES = [
    ({"a": [1, 2]}, {"a": [1, 2, 3]}, r"at \['a'\]: nest 0 has a list of 2, nest 1 has a list of 3"),
    ({"a": [1, 2]}, {"a": (1, 2)}, r"at \['a'\]: nest 0 has a list of 2, nest 1 has a tuple of 2"),
    (
        [1, {"x": 1}],
        [1, {"y": 1}],
        r"at \[1\]: nest 0 has a dict with keys \['x'\], nest 1 has a dict with keys \['y'\]",
    ),
    (
        [1, {"x": 1}],
        [1, {"x": 1, "y": 2}],
        r"at \[1\]: nest 0 has a dict with keys \['x'\], nest 1 has a dict with keys \['x', 'y'\]",
    ),
    ({"a": (1, [2])}, {"a": (1, 2)}, r"at \['a'\]\[1\]: nest 0 has a list of 1, nest 1 has a leaf of type int"),
    ([1], [[1]], r"at \[0\]: nest 0 has a leaf of type int, nest 1 has a list of 1"),
    (Point(1, 2), (1, 2), r"at the root: nest 0 has a namedtuple Point of 2, nest 1 has a tuple of 2"),
]


@pytest.mark.parametrize("a, b, message", MISMATCHES)
def test_map_many_structure_mismatch_names_the_path(a, b, message):
    with pytest.raises(ValueError, match="^nest.map_many: nests differ " + message + "$"):
        nest.map_many(lambda leaves: leaves, a, b)
    with pytest.raises(ValueError, match="^nest.map_many2: nests differ " + message + "$"):
        nest.map_many2(lambda x, y: x, a, b)


def test_map_many_names_the_nest_that_differs():
    with pytest.raises(ValueError, match=r"at \[1\]: nest 0 has a leaf of type int, nest 2 has a tuple of 0"):
        nest.map_many(lambda leaves: leaves, [1, 2], [1, 2], [1, ()])


# --- errors common to all functions ---------------------------------------------------------

ALL_CALLS = {
    "map": lambda n: nest.map(lambda x: x, n),
    "map_many": lambda n: nest.map_many(lambda leaves: leaves, n, n),
    "map_many2": lambda n: nest.map_many2(lambda x, y: x, n, n),
    "flatten": nest.flatten,
    "pack_as": lambda n: nest.pack_as(n, [1]),
    "front": nest.front,
    "for_each": lambda n: nest.for_each(lambda x: None, n),
}


@pytest.mark.parametrize("name", sorted(ALL_CALLS))
def test_non_string_dict_keys_are_an_error(name):
    with pytest.raises(ValueError, match=rf"^nest.{name}: dict keys must be strings, got 1 \(int\) at \['a'\]\[0\]$"):
        ALL_CALLS[name]({"a": [{1: "x"}]})


@pytest.mark.parametrize("name", sorted(ALL_CALLS))
def test_a_list_that_contains_itself_is_a_recursion_error(name):
    loop = []
    loop.append(loop)
    with pytest.raises(RecursionError, match="too deep, or a container contains itself"):
        ALL_CALLS[name](loop)


@pytest.mark.parametrize(
    "call",
    [
        lambda f: nest.map(f, [1, {"a": 2}]),
        lambda f: nest.for_each(f, [1, {"a": 2}]),
        lambda f: nest.map_many(f, [1, 2], [3, 4]),
        lambda f: nest.map_many2(lambda x, y: f(x), [1, 2], [3, 4]),
    ],
    ids=["map", "for_each", "map_many", "map_many2"],
)
def test_exceptions_from_f_propagate_unchanged(call):
    class Custom(Exception):
        pass

    error = Custom("from f")
    calls = []

    def f(leaf):
        calls.append(leaf)
        if len(calls) == 2:
            raise error
        return leaf

    with pytest.raises(Custom) as info:
        call(f)
    assert info.value is error
    assert len(calls) == 2, "the walk stops at the first exception"


def test_f_that_mutates_the_nest_gets_an_error_not_a_crash():
    items = [1, 2, 3]

    def shrink(x):
        items.clear()
        return x

    with pytest.raises(RuntimeError, match=r"nest.map: a list changed size during the call, at the root"):
        nest.map(shrink, items)

    table = {"a": 1, "b": 2}
    with pytest.raises(RuntimeError, match=r"a dict changed size"):
        nest.for_each(lambda x: table.pop("b", None), table)

    grow = [1]
    with pytest.raises(RuntimeError, match=r"a list changed size"):
        nest.map(grow.append, grow)


# --- reference counts and memory ------------------------------------------------------------


def test_reference_counts_of_leaves_and_results_are_unchanged():
    leaf = object()
    n = {"a": [leaf, (leaf, Point(leaf, leaf))], "b": leaf}
    flat = nest.flatten(n)
    before = sys.getrefcount(leaf)
    for _ in range(1000):
        nest.map(lambda x: x, n)
        nest.flatten(n)
        nest.pack_as(n, flat)
        nest.map_many(lambda leaves: leaves[0], n, n)
        nest.map_many2(lambda x, y: y, n, n)
        nest.front(n)
        nest.for_each(lambda x: None, n)
        with pytest.raises(ValueError):
            nest.pack_as(n, flat[:-1])
        with pytest.raises(ValueError):
            nest.map_many(lambda leaves: leaves, n, {"a": [leaf, leaf], "b": leaf})
        with pytest.raises(ZeroDivisionError):
            nest.map(lambda x: 1 / 0, n)
    assert sys.getrefcount(leaf) == before

    # New containers are held by their parent only (plus getrefcount's argument). The counts
    # are taken outside `assert`, whose rewriting by pytest keeps extra references.
    result = nest.map(lambda x: x, n)
    counts = [sys.getrefcount(result), sys.getrefcount(result["a"]), sys.getrefcount(result["a"][1])]
    assert counts == [2, 2, 2]
    packed = nest.pack_as(n, flat)
    counts = [sys.getrefcount(packed["a"]), sys.getrefcount(packed["a"][1][1])]
    assert counts == [2, 2]
    pairs = nest.map_many(lambda leaves: leaves, n, n)
    counts = [sys.getrefcount(pairs["a"]), sys.getrefcount(pairs["b"])]
    assert counts == [2, 2]


def test_memory_does_not_grow_over_many_calls():
    n = {"obs": [1, 2.0, "x"], "state": (None, {"h": 3, "c": 4})}
    flat = nest.flatten(n)
    other = {"obs": [1, 2], "state": (None, {"h": 3, "c": 4})}

    def run(times):
        for _ in range(times):
            nest.map(id, n)
            nest.flatten(n)
            nest.pack_as(n, flat)
            nest.map_many(len, n, n)
        for _ in range(times // 10):
            try:
                nest.map_many(len, n, other)
            except ValueError:
                pass

    process = psutil.Process()
    run(20_000)  # Warm up allocator pools and caches.
    gc.collect()
    rss_before = process.memory_info().rss
    run(1_000_000)  # A million calls of each; one leaked object per call would be > 50 MiB.
    gc.collect()
    growth = process.memory_info().rss - rss_before
    assert growth < 4 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


# --- properties -----------------------------------------------------------------------------

leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3))
keys = st.text(alphabet="abcdefgh", min_size=0, max_size=3)
nests = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.tuples(children, children).map(lambda xy: Point(*xy)),
    ),
    max_leaves=30,
)
PROPERTY_SETTINGS = settings(derandomize=True, database=None, max_examples=300, deadline=None)


@PROPERTY_SETTINGS
@given(nests)
def test_property_pack_as_flatten_round_trip(n):
    flat = nest.flatten(n)
    assert flat == reference_flatten(n)
    assert_same_nest(nest.pack_as(n, flat), n)


class Box:
    """A leaf wrapping a value (a tuple returned by f would be a nest itself)."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Box) and self.value == other.value

    __hash__ = None


@PROPERTY_SETTINGS
@given(nests)
def test_property_map_commutes_with_flatten(n):
    assert nest.flatten(nest.map(Box, n)) == [Box(x) for x in nest.flatten(n)]
    assert_same_nest(nest.map(Box, n), nest.pack_as(n, [Box(x) for x in nest.flatten(n)]))


@PROPERTY_SETTINGS
@given(nests)
def test_property_map_many_pairs_leaves_by_position(n):
    pairs = nest.map_many(Box, n, n)
    assert nest.flatten(pairs) == [Box((x, x)) for x in nest.flatten(n)]
    assert_same_nest(nest.map_many2(lambda x, y: y, n, n), n)
