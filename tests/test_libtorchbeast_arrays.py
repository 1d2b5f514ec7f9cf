"""Nest and array conversion between Python and libtorchbeast's C++ core (no copies out)."""

import numpy as np
import pytest

import libtorchbeast
from libtorchbeast import _C

DTYPES = [
    np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32,
    np.int64, np.uint64, np.float16, np.float32, np.float64,
]
ROUNDTRIPS = [_C._nest_roundtrip, _C._proto_roundtrip]


def random_array(rng, dtype, shape):
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("roundtrip", ROUNDTRIPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4)])
def test_every_dtype_round_trips(roundtrip, dtype, shape):
    rng = np.random.default_rng(0)
    x = random_array(rng, dtype, shape)
    y = roundtrip(x)
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.dtype(dtype)
    assert y.shape == shape
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("roundtrip", ROUNDTRIPS)
def test_non_contiguous_input_is_made_contiguous(roundtrip):
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    for view in [x.transpose(2, 0, 1), x[:, ::2, 1:], x[..., ::-1], np.asfortranarray(x)]:
        y = roundtrip(view)
        assert y.flags.c_contiguous
        np.testing.assert_array_equal(y, view)


@pytest.mark.parametrize("roundtrip", ROUNDTRIPS)
def test_byte_swapped_input(roundtrip):
    x = np.arange(6, dtype=">f8")
    y = roundtrip(x)
    assert y.dtype == np.float64 and y.dtype.isnative
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("roundtrip", ROUNDTRIPS)
def test_nest_structure(roundtrip):
    nest = {"b": (np.zeros(2), [np.ones(1), {"z": np.int8(3)}]), "a": np.arange(3), "empty": ()}
    out = roundtrip(nest)
    assert set(out) == {"a", "b", "empty"}
    assert isinstance(out["b"], tuple) and isinstance(out["b"][1], tuple)  # Lists come back as tuples.
    assert out["empty"] == ()
    np.testing.assert_array_equal(out["b"][1][1]["z"], 3)
    assert out["b"][1][1]["z"].shape == ()


def test_python_scalars_and_array_likes():
    class ArrayLike:  # Like a CPU torch tensor: converted through __array__.
        def __array__(self, dtype=None, copy=None):
            return np.full((2,), 7, dtype=np.int16)

    out = _C._nest_roundtrip({"f": 1.5, "i": 3, "b": True, "like": ArrayLike()})
    assert out["f"].dtype == np.float64 and out["f"] == 1.5
    assert out["i"].dtype == np.int64
    assert out["b"].dtype == np.bool_
    np.testing.assert_array_equal(out["like"], [7, 7])
    assert out["like"].dtype == np.int16


def test_outputs_share_the_cpp_buffer():
    queue = libtorchbeast.BatchingQueue(batch_dim=0)
    queue.enqueue({"x": np.arange(4.0)})
    x = queue.dequeue_many()["x"]
    assert type(x.base).__name__ == "PyCapsule"  # Owned by C++, not copied into NumPy.
    assert x.flags.writeable
    x[0] = 10.0  # Writable, and the buffer stays alive as long as the array.
    del queue
    assert x[0] == 10.0


def test_inputs_are_copied():
    queue = libtorchbeast.BatchingQueue(batch_dim=0)
    x = np.arange(4.0)
    queue.enqueue(x)
    x[0] = 99.0
    assert queue.dequeue_many()[0] == 0.0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"x": np.array([object()])}, r"unsupported array dtype object .* at \['x'\]"),
        ([np.zeros(2, np.complex64)], r"unsupported array dtype complex64 .* at \[0\]"),
        ({"s": "text"}, r"unsupported array dtype <U4"),
        ({1: np.zeros(1)}, "nest dict keys must be str"),
        (None, "unsupported array dtype object"),
    ],
)
def test_unsupported_values_raise_type_error(bad, message):
    with pytest.raises(TypeError, match=message):
        _C._nest_roundtrip(bad)
